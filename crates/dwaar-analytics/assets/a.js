/* Dwaar analytics: one beacon per page view, no cookies, nothing stored on the device. */
(function () {
  "use strict";
  var s = document.currentScript || document.querySelector("script[data-dwaar]");
  if (!s || !navigator.sendBeacon) return;
  var respect = s.getAttribute("data-dnt") !== "0";
  if (respect && (navigator.doNotTrack === "1" || window.doNotTrack === "1" || navigator.globalPrivacyControl === true)) return;
  var token = s.getAttribute("data-t") || "";
  var visible = 0, since = document.visibilityState === "visible" ? Date.now() : 0;
  var lcp = null, cls = 0, inp = null, sent = false;
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
  function send() {
    if (sent) return;
    sent = true;
    if (since) { visible += Date.now() - since; since = 0; }
    var body = JSON.stringify({
      t: token,
      p: location.pathname,
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
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") send();
    else if (!since) since = Date.now();
  });
  window.addEventListener("pagehide", send);
})();
