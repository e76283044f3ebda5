// Runs inside an HTML output's sandboxed frame: the console cannot look in (the frame has no
// origin), so this tells it how tall the content is, and again whenever that changes.
"use strict";

(() => {
  let sent = -1;
  const report = () => {
    const root = document.documentElement;
    // The html element is as tall as its content; a horizontal scrollbar comes on top of that.
    const height = Math.ceil(root.getBoundingClientRect().height) + (innerHeight - root.clientHeight);
    if (height === sent) return;
    sent = height;
    parent.postMessage({height}, "*");  // a height is no secret; the frame cannot name our origin
  };
  new ResizeObserver(report).observe(document.documentElement);
  addEventListener("load", report);  // images and fonts are in by now
})();
