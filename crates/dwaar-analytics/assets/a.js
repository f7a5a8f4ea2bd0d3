/* Dwaar analytics: one beacon per page view, no cookies, nothing stored on the device. */
(function () {
  "use strict";
  var s = document.currentScript || document.querySelector("script[data-dwaar]");
  if (!s || !navigator.sendBeacon) return;
  var respect = s.getAttribute("data-dnt") !== "0";
  if (respect && (navigator.doNotTrack === "1" || window.doNotTrack === "1" || navigator.globalPrivacyControl === true)) return;
  var token = s.getAttribute("data-t") || "";
  var visible = 0, since = document.visibilityState === "visible" ? Date.now() : 0;
  var lcp = null, cls = 0, inp = null, sent = false, path = location.pathname, soft = false;
  function watch(type, fn, opts) {
    try {
      var o = new PerformanceObserver(function (l) { l.getEntries().forEach(fn); });
      var init = { type: type, buffered: true };
      for (var k in opts || {}) init[k] = opts[k];
      o.observe(init);
    } catch (e) { /* not supported by this browser */ }
  }
  watch("largest-contentful-paint", function (e) { lcp = e.startTime; });
  watch("layout-shift", function (e) { if (!e.hadRecentInput) cls += e.value; });
  watch("event", function (e) { if (e.interactionId && (inp === null || e.duration > inp)) inp = e.duration; }, { durationThreshold: 40 });
  // One beacon for the view that is ending: the page, or a route of a single-page app.
  function beacon() {
    if (since) { visible += Date.now() - since; since = 0; }
    var body = JSON.stringify({
      t: token,
      p: path,
      n: soft ? 1 : 0,
      r: document.referrer,
      w: window.innerWidth || 0,
      l: navigator.language || "",
      s: Math.round(visible / 100) / 10,
      lcp: lcp === null ? null : Math.round(lcp),
      cls: Math.round(cls * 10000) / 10000,
      inp: inp === null ? null : Math.round(inp)
    });
    navigator.sendBeacon("/_dwaar/collect", new Blob([body], { type: "text/plain" }));
  }
  function send() {
    if (sent) return;
    sent = true;
    beacon();
  }
  // Single-page apps: a new route (pushState, back/forward) ends the previous view.
  function route() {
    if (sent || location.pathname === path) return;
    beacon();
    path = location.pathname;
    soft = true;
    visible = 0;
    since = document.visibilityState === "visible" ? Date.now() : 0;
    lcp = null; cls = 0; inp = null;
  }
  var push = history.pushState;
  history.pushState = function () { var r = push.apply(this, arguments); route(); return r; };
  window.addEventListener("popstate", route);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") send();
    else if (!since) since = Date.now();
  });
  window.addEventListener("pagehide", send);
})();
