// The imgsearch page: pick or drop an image, see its nearest images, click one to
// search by it, add images when the server allows it.  Plain JS, no libraries;
// every text from the server is put in the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("imgsearch-token") || "";

function withToken(url) {
  return token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
}

async function call(url, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(url, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (response.status === 401) $("token-box").hidden = false;
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function searchOptions() {
  const k = parseInt($("k").value, 10) || 12;
  const filter = $("filter").value.trim();
  if (filter) JSON.parse(filter);  // a syntax error is reported before anything is sent
  return { k, filter };
}

async function refreshInfo() {
  try {
    const info = await call("/info");
    const ex = info.extractor && info.extractor.name;
    $("info").textContent = `${info.count} images · ${ex} · ${info.index} · ${info.metric}`;
    $("add-box").hidden = !info.allow_add;
    $("token-box").hidden = true;
  } catch (e) {
    $("info").textContent = "";
    say(e.message, true);
  }
}

function basename(path) {
  return path ? path.split(/[\\/]/).pop() : "";
}

function render(result) {
  const grid = $("grid");
  grid.replaceChildren();
  for (const hit of result.hits) {
    const card = document.createElement("figure");
    card.className = "hit";
    card.dataset.id = hit.id;
    card.dataset.rank = hit.rank;
    card.title = hit.path || `id ${hit.id}`;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = basename(hit.path) || `id ${hit.id}`;
    if (hit.path) img.src = withToken(`/images/${hit.id}/thumbnail?size=256`);
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = `${hit.rank}. ${basename(hit.path) || "id " + hit.id}`;
    const dist = document.createElement("div");
    dist.className = "distance";
    dist.textContent = `distance ${hit.distance.toPrecision(4)} · score ${hit.score.toPrecision(3)}`;
    card.append(img, name, dist);
    if (hit.metadata !== null && hit.metadata !== undefined) {
      const meta = document.createElement("pre");
      meta.className = "metadata";
      meta.textContent = JSON.stringify(hit.metadata);
      card.append(meta);
    }
    card.addEventListener("click", () => searchById(hit.id, card.title));
    grid.append(card);
  }
  say(`${result.hits.length} results for ${result.query} (${result.took_ms.toFixed(1)} ms)`);
}

async function searchFile(file) {
  let opts;
  try { opts = searchOptions(); } catch (e) { return say("filter: " + e.message, true); }
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("k", String(opts.k));
  if (opts.filter) form.append("filter", opts.filter);
  const preview = $("query-preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  say("searching…");
  try { render(await call("/search", { method: "POST", body: form })); }
  catch (e) { say(e.message, true); }
}

async function searchById(id, label) {
  let opts;
  try { opts = searchOptions(); } catch (e) { return say("filter: " + e.message, true); }
  const body = { id, k: opts.k, exclude_self: true };
  if (opts.filter) body.filter = JSON.parse(opts.filter);
  const preview = $("query-preview");
  preview.src = withToken(`/images/${id}/thumbnail?size=128`);
  preview.hidden = false;
  say(`searching by ${basename(label)}…`);
  try {
    render(await call("/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    }));
  } catch (e) { say(e.message, true); }
}

async function addImages(event) {
  event.preventDefault();
  const files = $("add-files").files;
  if (!files.length) return say("choose images to add first", true);
  const form = new FormData();
  for (const f of files) form.append("images", f, f.name);
  const meta = $("add-meta").value.trim();
  if (meta) form.append("metadata", meta);
  say(`adding ${files.length} images…`);
  try {
    const r = await call("/images", { method: "POST", body: form });
    say(`added ${r.added.length} images; ${r.count} in the index`);
    $("add-form").reset();
    refreshInfo();
  } catch (e) { say(e.message, true); }
}

function setUp() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) searchFile(e.dataTransfer.files[0]);
  });
  $("query-file").addEventListener("change", (e) => { if (e.target.files.length) searchFile(e.target.files[0]); });
  $("add-form").addEventListener("submit", addImages);
  $("token-save").addEventListener("click", () => {
    token = $("token").value;
    sessionStorage.setItem("imgsearch-token", token);
    refreshInfo();
  });
  refreshInfo();
}

setUp();
