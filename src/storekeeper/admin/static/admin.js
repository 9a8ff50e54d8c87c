// The admin page works without this file: it only adds conveniences.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const all of document.querySelectorAll("input.select-all")) {
    all.addEventListener("change", () => {
      const table = all.closest("table");
      for (const box of table.querySelectorAll("tbody input[name=target]")) {
        box.checked = all.checked;
      }
    });
  }
});
