// Live updates for the status page: server-sent events from /events carry the
// rows (rendered and escaped by the server) of every node that changed, batched.
"use strict";
(function () {
  var live = document.body.dataset.live;
  if (!live || !window.EventSource) { return; }
  var source = new EventSource("/events" + location.search);
  // A form on its way must not be cancelled by a reload for the change it causes.
  document.addEventListener("submit", function () { source.close(); });
  source.addEventListener("nodes", function (ev) {
    var msg = JSON.parse(ev.data);
    if (msg.resync || (live !== "fleet" && live in msg.rows)) { location.reload(); return; }
    Object.keys(msg.rows).forEach(function (name) {
      var tr = document.querySelector('tr[data-node="' + CSS.escape(name) + '"]');
      if (!tr) { return; }
      if (msg.rows[name] === null) { tr.remove(); } else { tr.outerHTML = msg.rows[name]; }
    });
    Object.keys(msg.counts).forEach(function (state) {
      var el = document.querySelector('[data-count="' + CSS.escape(state) + '"]');
      if (el) { el.textContent = msg.counts[state]; }
    });
    document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
  });
})();
