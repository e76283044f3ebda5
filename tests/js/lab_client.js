// JupyterLab's client library (@jupyterlab/services) driving a kernelserver namespace as a kernel:
// start, kernel_info, execute, restart, interrupt, shutdown. Prints one JSON report on stdout.
// Usage: node lab_client.js <baseUrl> <token>
'use strict';
const { KernelManager, ServerConnection } = require('@jupyterlab/services');
const WebSocket = require('ws');

async function run(kernel, code) {
  const future = kernel.requestExecute({ code });
  const outputs = [];
  future.onIOPub = msg => {
    const type = msg.header.msg_type;
    if (type === 'stream') outputs.push(['stream', msg.content.text]);
    if (type === 'execute_result') outputs.push(['result', msg.content.data['text/plain']]);
    if (type === 'display_data') outputs.push(['display', msg.content.data['text/plain']]);
    if (type === 'error') outputs.push(['error', msg.content.ename]);
  };
  const reply = await future.done;
  return { status: reply.content.status, ename: reply.content.ename || null, outputs };
}

async function main() {
  const [baseUrl, token] = process.argv.slice(2);
  const timer = setTimeout(() => { console.error('TIMEOUT'); process.exit(2); }, 60000);
  const serverSettings = ServerConnection.makeSettings({
    baseUrl, wsUrl: 'ws' + baseUrl.slice(4), token, appendToken: true, WebSocket });
  const manager = new KernelManager({ serverSettings });
  await manager.ready;
  const kernel = await manager.startNew({ name: 'python3' });
  const report = { id: kernel.id };
  const info = await kernel.info;
  report.info = { protocol: info.protocol_version, language: info.language_info.name,
                  implementation: info.implementation };
  report.first = await run(kernel, "x = 41\nprint('hello from lab')\ndisplay('shown')\nx + 1");
  report.failing = await run(kernel, '1/0');
  await kernel.restart();
  report.afterRestart = await run(kernel, 'x');
  const slow = run(kernel, 'import time\ntime.sleep(20)');
  await new Promise(resolve => setTimeout(resolve, 700));
  await kernel.interrupt();
  report.interrupted = await slow;
  report.statusBeforeShutdown = kernel.status;
  await kernel.shutdown();
  report.listedAfterShutdown = (await manager.refreshRunning(), Array.from(manager.running()).length);
  manager.dispose();
  clearTimeout(timer);
  console.log('REPORT ' + JSON.stringify(report));
  process.exit(0);
}

main().catch(error => { console.error('ERROR', error); process.exit(1); });
