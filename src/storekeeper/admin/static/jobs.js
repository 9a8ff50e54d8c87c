// Live progress of a background job on the admin page (no inline script: the page's CSP
// forbids it). The job page names its JSON in data-job-poll; this polls it, appends the new
// progress lines and shows the state (waiting for a store's lock, say), and reloads the page
// once the job is over so the server renders its summary table. Without JavaScript the page
// refreshes itself instead (<noscript><meta http-equiv="refresh">).
(function () {
  "use strict";
  var box = document.querySelector("[data-job-poll]");
  if (!box) {
    return;
  }
  var url = box.getAttribute("data-job-poll");
  var next = parseInt(box.getAttribute("data-job-next") || "0", 10);
  var lines = document.getElementById("job-lines");
  var state = document.getElementById("job-state");
  var done = document.getElementById("job-done");
  var waiting = document.getElementById("job-waiting");

  function show(job) {
    job.lines.forEach(function (text) {
      var item = document.createElement("li");
      item.textContent = text; // text, never HTML: a store's name stays inert
      lines.appendChild(item);
    });
    next = job.next;
    state.textContent = job.state;
    state.className = "job-state state-" + job.state;
    if (done) {
      done.textContent = job.done + "/" + job.total;
    }
    if (waiting) {
      waiting.textContent = job.waiting || "";
      waiting.hidden = !job.waiting;
    }
  }

  function poll() {
    fetch(url + "?since=" + next, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (job) {
        show(job);
        if (job.over) {
          window.location.reload();
        } else {
          window.setTimeout(poll, 300);
        }
      })
      .catch(function () {
        window.setTimeout(poll, 2000); // the server restarting, say: try again, more slowly
      });
  }

  box.classList.add("job-live");
  poll();
})();
