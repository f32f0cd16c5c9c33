// Self-check of the page, recorded on <html> for tests and support requests:
// data-report-errors lists script errors, resources that failed to load, security-policy
// violations and any call to alert() (a report never calls it, so a call means injected
// content); data-report-images is "<images> <images decoded>".
(function () {
  var root = document.documentElement, errors = [];
  function note(message) {
    errors.push(String(message));
    root.setAttribute("data-report-errors", JSON.stringify(errors));
  }
  root.setAttribute("data-report-errors", "[]");
  window.addEventListener("error", function (event) {
    var target = event.target;
    note(event.message || ("failed to load " + ((target && (target.alt || target.tagName)) || "a resource")));
  }, true);
  document.addEventListener("securitypolicyviolation", function (event) {
    note("blocked by the security policy: " + event.violatedDirective);
  });
  window.alert = function (message) { note("alert(" + message + ")"); };
  window.addEventListener("load", function () {
    var images = document.images, decoded = 0;
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) { decoded++; }
      else { note("image not decoded: " + images[i].alt); }
    }
    root.setAttribute("data-report-images", images.length + " " + decoded);
  });
})();
