// The labeling page: one leased image at a time, answers sent in order in the background (retried with
// the same request id), a few items leased and preloaded ahead so a label never waits on the server.
"use strict";
(() => {
  const AHEAD = 4;            // items leased and preloaded beyond the one on screen
  const POLL_MS = 4000;       // progress refresh, and queue check while the queue is empty
  const $ = (id) => document.getElementById(id);

  let config = null;
  let annotator = localStorage.getItem("todal.annotator") || "";
  let current = null;         // the item on screen
  const ahead = [];           // leased items whose images are preloading
  const answered = new Set(); // samples answered here whose write is not acknowledged yet: not shown again
  let writes = Promise.resolve();  // the write chain: a label reaches the server before its undo
  let pending = 0;
  let emptyTimer = null;
  let checked = false;        // the server has answered one lease request: an empty queue is really empty

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const requestId = () => (crypto.randomUUID ? crypto.randomUUID()
    : Date.now().toString(36) + Math.random().toString(36).slice(2));

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  function setSaved() {
    $("saved").textContent = pending ? `saving ${pending}…` : "all saved";
  }

  // POST a JSON body until the server answers; a network failure or 5xx retries the same body (same
  // request id, so the server records it once). A 4xx is shown and not retried.
  async function post(url, body) {
    let delay = 250;
    for (;;) {
      try {
        const r = await fetch(url, {method: "POST", headers: {"content-type": "application/json"},
                                    body: JSON.stringify(body), credentials: "same-origin"});
        const data = await r.json().catch(() => ({}));
        if (r.ok) { showError(""); return data; }
        if (r.status < 500) { showError(data.error || `The server answered ${r.status}.`); return null; }
      } catch (e) {
        // offline or the server restarts: retry below
      }
      $("saved").textContent = "server unreachable, retrying…";
      await sleep(delay);
      delay = Math.min(delay * 2, 4000);
    }
  }

  function write(url, body) {
    pending += 1;
    setSaved();
    const done = writes.then(() => post(url, body)).finally(() => {
      pending -= 1;
      setSaved();
      refreshProgress();
    });
    writes = done.catch(() => null);
    return done;
  }

  function preload(item) {
    item.img = new Image();
    item.img.src = item.image;
    return item;
  }

  // Lease more items once the answers before are in (so their samples are released first).
  let refilling = null;
  function refill() {
    if (refilling) return refilling;
    if (ahead.length >= AHEAD) return Promise.resolve();
    const n = Math.min(50, AHEAD + 1 + answered.size);
    refilling = (writes = writes.then(() => post("/api/next", {annotator, n}))).then((data) => {
      refilling = null;
      if (!data) return;
      const have = new Set(ahead.map((it) => it.sample));
      if (current) have.add(current.sample);
      for (const it of data.items) {
        if (!have.has(it.sample) && !answered.has(it.sample)) ahead.push(preload(it));
      }
      checked = true;
      if (!current) { if (ahead.length) advance(); else render(); }
    });
    return refilling;
  }

  function advance() {
    current = ahead.shift() || null;
    render();
    refill();
  }

  function render() {
    const has = !!current;
    $("empty").hidden = has || !checked;
    $("image").classList.toggle("hidden", !has);
    for (const b of document.querySelectorAll(".classes button, #skip, #unsure")) b.disabled = !has;
    clearInterval(emptyTimer);
    emptyTimer = null;
    if (!has) {
      $("image").removeAttribute("src");
      $("path").textContent = "";
      renderGuesses([]);
      emptyTimer = setInterval(() => { if (!current) refill(); }, POLL_MS);
      return;
    }
    $("image").src = current.image;
    $("image").alt = `sample ${current.sample}`;
    $("path").textContent = current.path;
    renderGuesses(current.guesses || []);
  }

  function renderGuesses(guesses) {
    const list = $("guesses");
    list.replaceChildren();
    const byClass = new Map(guesses.map(([c, p]) => [c, p]));
    document.querySelectorAll(".classes button").forEach((b, i) => {
      b.querySelector(".p").textContent = byClass.has(i) ? `${Math.round(byClass.get(i) * 100)}%` : "";
    });
    if (!guesses.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = current ? "No model yet: its guesses appear after the first step." : "";
      list.append(li);
      return;
    }
    for (const [c, p] of guesses.slice(0, 3)) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = config.classes[c] ?? `class ${c}`;
      const meter = document.createElement("div");
      meter.className = "meter";
      const fill = document.createElement("div");
      fill.style.width = `${Math.max(1, p * 100)}%`;
      meter.append(fill);
      const pct = document.createElement("span");
      pct.className = "p";
      pct.textContent = p < 0.01 ? "<1%" : `${Math.round(p * 100)}%`;
      li.append(name, meter, pct);
      list.append(li);
    }
  }

  // --- actions ------------------------------------------------------------------------------
  function answer(url, extra) {
    if (!current) return;
    const item = current;
    answered.add(item.sample);
    write(url, {sample: item.sample, annotator, request: requestId(), ...extra})
      .then(() => answered.delete(item.sample));
    advance();
  }

  const label = (cls) => answer("/api/label", {class: cls});
  const unsure = () => answer("/api/unsure", {});

  function skip() {
    if (!current) return;
    const item = current;
    answered.add(item.sample);
    write("/api/skip", {sample: item.sample, annotator}).then(() => answered.delete(item.sample));
    advance();
  }

  function undo() {
    write("/api/undo", {annotator}).then((data) => {
      if (!data) return;
      if (!data.item) { showError("Nothing to undo: you have no answer left to take back."); return; }
      const it = preload(data.item);
      answered.delete(it.sample);
      const i = ahead.findIndex((a) => a.sample === it.sample);
      if (i >= 0) ahead.splice(i, 1);
      if (current && current.sample !== it.sample) ahead.unshift(current);
      current = it;
      render();
    });
  }

  function flash(button) {
    if (!button) return;
    button.classList.add("pressed");
    setTimeout(() => button.classList.remove("pressed"), 120);
  }

  function onKey(e) {
    if (!config || !annotator || $("name-dialog").open) return;
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === "INPUT") return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const k = config.keys;
    const i = k.classes.indexOf(key);
    if (i >= 0) { flash(document.querySelectorAll(".classes button")[i]); label(i); }
    else if (key === k.skip) { flash($("skip")); skip(); }
    else if (key === k.unsure || key === "?") { flash($("unsure")); unsure(); }
    else if (k.undo.includes(key)) { flash($("undo")); undo(); }
    else return;
    e.preventDefault();
  }

  // --- progress -----------------------------------------------------------------------------
  let progressSoon = null;
  function refreshProgress() {
    clearTimeout(progressSoon);
    progressSoon = setTimeout(loadProgress, 150);
  }

  async function loadProgress() {
    let p;
    try {
      const r = await fetch("/api/progress", {credentials: "same-origin"});
      if (!r.ok) return;
      p = await r.json();
    } catch (e) {
      return;
    }
    const b = p.batch;
    $("batch-text").textContent = `${b.done} done · ${b.left} left in this batch`;
    $("batch-bar").style.width = b.size ? `${(100 * b.done) / b.size}%` : "0";
    $("progress-text").textContent =
      `${p.labeled} labeled, ${p.unsure} not sure, ${p.queued} queued` + (p.step == null ? "" : ` (step ${p.step})`);
    const e = p.estimate;
    $("estimate").hidden = !(e && e.accuracy != null);
    if (e && e.accuracy != null) {
      const pct = (v) => `${(100 * v).toFixed(1)}%`;
      $("estimate").textContent = `Model accuracy ≈ ${pct(e.accuracy)} (95% interval ${pct(e.low)}–${pct(e.high)}, ` +
        `${e.n} validation labels, step ${e.step})` + (e.recommendation ? ` · ${e.recommendation}` : "");
    }
    const max = Math.max(1, ...Object.values(p.per_class));
    table($("per-class"), Object.entries(p.per_class), max);
    const people = Object.entries(p.per_annotator).sort((a, b) => b[1] - a[1]);
    table($("per-annotator"), people.length ? people : [["nobody yet", 0]], Math.max(1, ...people.map((x) => x[1])));
  }

  function table(el, rows, max) {
    el.replaceChildren();
    for (const [name, n] of rows) {
      const tr = document.createElement("tr");
      const a = document.createElement("td");
      a.textContent = name === annotator ? `${name} (you)` : name;
      const bar = document.createElement("td");
      bar.className = "barcell";
      bar.innerHTML = '<div class="mini"><div></div></div>';
      bar.firstChild.firstChild.style.width = `${(100 * n) / max}%`;
      const c = document.createElement("td");
      c.textContent = n;
      tr.append(a, bar, c);
      el.append(tr);
    }
  }

  // --- start --------------------------------------------------------------------------------
  function buildButtons() {
    const box = $("classes");
    config.classes.forEach((name, i) => {
      const b = document.createElement("button");
      b.type = "button";
      const key = config.keys.classes[i];
      b.innerHTML = '<kbd></kbd><span class="name"></span><span class="p"></span>';
      b.querySelector("kbd").textContent = key ? key.toUpperCase() : "·";
      b.querySelector(".name").textContent = name;
      b.title = key ? `${name} (key ${key})` : name;
      b.addEventListener("click", () => label(i));
      box.append(b);
    });
    const k = config.keys;
    $("skip").innerHTML = `Skip <kbd>${k.skip.toUpperCase()}</kbd>`;
    $("unsure").innerHTML = `Not sure <kbd>${k.unsure.toUpperCase()}</kbd>`;
    $("undo").innerHTML = "Undo " + k.undo.map((u) => `<kbd>${u === "Backspace" ? "⌫" : u.toUpperCase()}</kbd>`).join(" ");
    $("skip").addEventListener("click", skip);
    $("unsure").addEventListener("click", unsure);
    $("undo").addEventListener("click", undo);
  }

  function askName() {
    const dialog = $("name-dialog");
    $("name-input").value = annotator;
    dialog.showModal();
  }

  function setName(name) {
    const first = !annotator;
    annotator = name;
    localStorage.setItem("todal.annotator", name);
    $("who-name").textContent = name;
    // Another name holds other leases: start over with theirs.
    ahead.length = 0;
    current = null;
    checked = false;
    answered.clear();
    render();
    refill();
    if (first) loadProgress();
  }

  // The printed URL carries the token in its fragment (#token=...), which the browser never sends to a
  // server: trade it once for the HttpOnly cookie, and drop it from the address bar and the history.
  async function login() {
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (token === null) return true;
    history.replaceState(null, "", location.pathname + location.search);
    try {
      const r = await fetch("/api/session", {method: "POST", headers: {authorization: `Bearer ${token}`},
                                             credentials: "same-origin"});
      if (r.ok) return true;
      const data = await r.json().catch(() => ({}));
      halt(data.error || `The server answered ${r.status}.`);
    } catch (e) {
      halt("The server is unreachable; reload the page when it runs again.");
    }
    return false;
  }

  // The page cannot start (no token, a wrong one): say so where the image would be, and offer no actions.
  function halt(text) {
    showError(text);
    for (const b of document.querySelectorAll(".actions button, #who-change")) b.disabled = true;
    const title = document.createElement("h2");
    title.textContent = "Cannot start";
    const line = document.createElement("p");
    line.textContent = text;
    $("empty").replaceChildren(title, line);
    $("empty").hidden = false;
  }

  async function start() {
    if (!(await login())) return;
    const r = await fetch("/api/config", {credentials: "same-origin"});
    const data = await r.json().catch(() => ({}));
    if (!r.ok) { halt(data.error || `The server answered ${r.status}.`); return; }
    config = data;
    document.title = `${config.name} · todal annotate`;
    $("project").textContent = config.name;
    buildButtons();
    render();
    $("name-form").addEventListener("submit", (e) => {
      const name = $("name-input").value.trim();
      if (name) setName(name); else e.preventDefault();
    });
    $("name-dialog").addEventListener("cancel", (e) => { if (!annotator) e.preventDefault(); });
    $("who-change").addEventListener("click", askName);
    document.addEventListener("keydown", onKey);
    setInterval(loadProgress, POLL_MS);
    loadProgress();
    if (annotator) setName(annotator); else askName();
  }

  start();
})();
