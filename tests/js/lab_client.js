// JupyterLab's client library (@jupyterlab/services) driving a kernelserver namespace as a kernel:
// start, kernel_info, execute, IPython syntax and display updates, restart, interrupt, shutdown.
// Prints one JSON report on stdout.
// Usage: node lab_client.js <baseUrl> <token> [--ipython-only | --kernel=NAME [CODE]]
// <baseUrl> is kernelserver itself, or a jupyter_server started with --gateway-url (JupyterLab's chain).
// --ipython-only runs only the IPython cells (report.ipython), then shuts the kernel down.
'use strict';
const { KernelManager, ServerConnection } = require('@jupyterlab/services');
const WebSocket = require('ws');

const OUTPUT_TYPES = ['stream', 'display_data', 'update_display_data', 'execute_result', 'error',
                      'clear_output'];

// Runs code; the reply and every output message of the cell, in order. onOutput sees each as it comes.
async function execute(kernel, code, onOutput) {
  const future = kernel.requestExecute({ code });
  const messages = [];
  future.onIOPub = msg => {
    if (!OUTPUT_TYPES.includes(msg.header.msg_type)) return;
    const message = { type: msg.header.msg_type, content: msg.content };
    messages.push(message);
    if (onOutput) onOutput(message);
  };
  const reply = await future.done;
  return { status: reply.content.status, ename: reply.content.ename || null, messages };
}

// The short form the first checks compare whole: [kind, text].
async function run(kernel, code, onOutput) {
  const { status, ename, messages } = await execute(kernel, code, onOutput);
  const outputs = [];
  for (const { type, content } of messages) {
    if (type === 'stream') outputs.push(['stream', content.text]);
    if (type === 'execute_result') outputs.push(['result', content.data['text/plain']]);
    if (type === 'display_data') outputs.push(['display', content.data['text/plain']]);
    if (type === 'error') outputs.push(['error', content.ename]);
  }
  return { status, ename, outputs };
}

// What a notebook's cells written in IPython syntax send: rich display, shell output, display updates.
async function ipython(kernel) {
  return {
    markdown: await execute(kernel,
      'from IPython.display import display, Markdown; display(Markdown("**b**"))'),
    shell: await execute(kernel, '!echo hi'),
    update: await execute(kernel, 'h = display("one", display_id=True); h.update("two")'),
  };
}

async function main() {
  const [baseUrl, token, mode, namedCode] = process.argv.slice(2);
  const timer = setTimeout(() => { console.error('TIMEOUT'); process.exit(2); }, 90000);
  const serverSettings = ServerConnection.makeSettings({
    baseUrl, wsUrl: 'ws' + baseUrl.slice(4), token, appendToken: true, WebSocket });
  const manager = new KernelManager({ serverSettings });
  await manager.ready;
  // --kernel=NAME [CODE]: start a kernel by that kernelspec name, run one cell (CODE, else one
  // printing sys.executable), report its kernel_info's language, shut it down.
  const named = mode && mode.startsWith('--kernel=') ? mode.slice('--kernel='.length) : null;
  const kernel = await manager.startNew({ name: named || 'python3' });
  const report = { id: kernel.id, name: kernel.name };
  if (named) {
    report.cell = await run(kernel, namedCode || 'import sys\nprint(sys.executable)');
    report.language = (await kernel.info).language_info.name;
    await kernel.shutdown();
    manager.dispose();
    clearTimeout(timer);
    console.log('REPORT ' + JSON.stringify(report));
    process.exit(0);
  }
  const info = await kernel.info;
  report.info = { protocol: info.protocol_version, language: info.language_info.name,
                  implementation: info.implementation };
  if (mode !== '--ipython-only') {
    report.first = await run(kernel, "x = 41\nprint('hello from lab')\ndisplay('shown')\nx + 1");
    report.failing = await run(kernel, '1/0');
    await kernel.restart();
    report.afterRestart = await run(kernel, 'x');
    // Interrupt once the cell has said it is inside its sleep, not after a guessed delay.
    let started;
    const sleeping = new Promise(resolve => { started = resolve; });
    const slow = run(kernel, "import time\nprint('sleeping', flush=True)\ntime.sleep(20)",
                     message => { if (message.type === 'stream') started(); });
    await sleeping;
    await kernel.interrupt();
    report.interrupted = await slow;
  }
  report.ipython = await ipython(kernel);
  report.statusBeforeShutdown = kernel.status;
  await kernel.shutdown();
  report.listedAfterShutdown = (await manager.refreshRunning(), Array.from(manager.running()).length);
  manager.dispose();
  clearTimeout(timer);
  console.log('REPORT ' + JSON.stringify(report));
  process.exit(0);
}

main().catch(error => { console.error('ERROR', error); process.exit(1); });
