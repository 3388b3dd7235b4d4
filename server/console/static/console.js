// The console's only script. It talks to the public /v1 API with the operator's key in the X-API-Key header,
// and writes every value that came from the server or a client with textContent (never as HTML).
"use strict";

(() => {
  const KEY_STORAGE = "reid.console.apiKey";
  const body = document.body;
  const LIMITS = {
    maxTopK: Number(body.dataset.maxTopK) || 100,
    maxUploadBytes: Number(body.dataset.maxUploadBytes) || 0,
  };
  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    crops: [], // the File objects of the last search, reused for a person's path
    hits: [], // the last search's hits
    tracks: new Map(), // track id -> the last search's summary of that track (its identity_id among others)
    images: new Map(), // gallery id -> Promise of a blob: URL (or null when the item has no kept image)
    readOnly: false, // learned from a 403: the key may not erase
    pendingErase: null,
  };

  // ---- small helpers -------------------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("data-") || name.startsWith("aria-") || name === "role") node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fact(dl, term, value) {
    dl.append(el("dt", { text: term }), el("dd", { text: value === null || value === undefined ? "—" : String(value) }));
  }

  const pad = (n) => String(n).padStart(2, "0");

  function formatTime(seconds) {
    if (seconds === null || seconds === undefined) return "unknown";
    const d = new Date(seconds * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function formatClock(seconds) {
    if (seconds === null || seconds === undefined) return "unknown";
    const d = new Date(seconds * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  // "first – last" of the items' capture times (the date once when both fall on one day), the one time, or "time unknown".
  function timeSpan(items) {
    const times = items.map((i) => i.captured_at).filter((t) => t !== null && t !== undefined);
    if (!times.length) return "time unknown";
    const first = Math.min(...times);
    const last = Math.max(...times);
    if (first === last) return formatTime(first);
    const sameDay = new Date(first * 1000).toDateString() === new Date(last * 1000).toDateString();
    return `${formatTime(first)} – ${sameDay ? formatClock(last) : formatTime(last)}`;
  }

  const percent = (rate) => `${+(rate * 100).toPrecision(3)}%`;
  const score = (value) => value.toFixed(3);

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  // ---- the API -------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, requestId, retryAfter) {
      super(message || `HTTP ${status}`);
      this.status = status;
      this.code = code || "";
      this.serverMessage = message || "";
      this.requestId = requestId || "";
      this.retryAfter = retryAfter;
    }
  }

  async function api(path, { method = "GET", form = null, auth = true } = {}) {
    const headers = { Accept: "application/json" };
    if (auth) headers["X-API-Key"] = state.key;
    let response;
    try {
      response = await fetch(path, { method, headers, body: form, credentials: "omit", cache: "no-store" });
    } catch {
      throw new ApiError(0, "network", "", "", null);
    }
    if (!response.ok) {
      let error = {};
      let requestId = response.headers.get("X-Request-ID");
      try {
        const parsed = await response.json();
        error = parsed.error || {};
        requestId = parsed.request_id || requestId;
      } catch {
        // not our error schema (a proxy's page): the status alone is described
      }
      throw new ApiError(response.status, error.code, error.message, requestId, response.headers.get("Retry-After"));
    }
    return response;
  }

  // Words an operator can act on, for each way a request can fail.
  function describe(err, action) {
    if (!(err instanceof ApiError)) return `${action} failed in this page: ${err.message}`;
    const limit = LIMITS.maxUploadBytes;
    const size = limit >= 1024 * 1024 ? `${(limit / (1024 * 1024)).toFixed(1)} MB` : `${Math.round(limit / 1024)} KB`;
    const wait = err.retryAfter ? `Try again in ${err.retryAfter} second${err.retryAfter === "1" ? "" : "s"}.` : "Try again shortly.";
    const said = err.serverMessage ? ` The server said: ${err.serverMessage}.` : "";
    const words = {
      0: "The server could not be reached. Check the network connection and that the service is running.",
      400: `One of the files could not be read as an image.${said}`,
      401: "The API key was not accepted. Sign in again with a valid key.",
      403: "This API key may search and read, but not change the gallery: erasing needs an admin key.",
      404: `Not found: it may have been erased already.${said}`,
      408: "The upload took too long to arrive. Check the connection and try again.",
      413: `The upload is too large: the server accepts at most ${size} in one request. Use smaller crops or fewer at once.`,
      415: "One of the files is not an image the server can read. Use JPEG, PNG or WEBP crops.",
      422: `The server refused the request.${said}`,
      429: `Too many requests from this address at once. ${wait}`,
      502: "The model server gave an unusable answer. Try again; if it persists, tell the administrator.",
      503: `The service is not ready or is busy right now. ${wait}${said}`,
      504: "The model did not answer in time. Try again.",
      507: "The server's image store is full. Tell the administrator.",
    };
    const text = words[err.status] || `${action} failed on the server (HTTP ${err.status}).${said}`;
    return err.requestId ? `${action}: ${text} (reference ${err.requestId})` : `${action}: ${text}`;
  }

  function fail(err, action) {
    if (err instanceof ApiError && err.status === 401) {
      signOut();
    }
    if (err instanceof ApiError && err.status === 403) {
      state.readOnly = true;
      for (const button of document.querySelectorAll("[data-erase]")) button.hidden = true;
    }
    setStatus("");
    showError(describe(err, action));
  }

  // A gallery image needs the key, so it is fetched here and shown as a blob: URL (a plain src would not carry it).
  function imageUrl(id) {
    if (!state.images.has(id)) {
      const load = api(`/v1/gallery/${encodeURIComponent(id)}/image`, { auth: true })
        .then((r) => r.blob())
        .then((blob) => URL.createObjectURL(blob))
        .catch(() => null);
      state.images.set(id, load);
    }
    return state.images.get(id);
  }

  function thumbnail(id, alt) {
    const frame = el("div", { className: "thumb" });
    const img = el("img", { alt, width: 64, height: 128, decoding: "async" });
    frame.append(img);
    imageUrl(id).then((url) => {
      if (url) {
        img.src = url;
      } else {
        img.remove();
        frame.append(el("span", { className: "noimage", text: "no image kept" }));
      }
    });
    return frame;
  }

  function forgetImages() {
    for (const load of state.images.values()) load.then((url) => url && URL.revokeObjectURL(url));
    state.images.clear();
  }

  // ---- sign in and out -----------------------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const input = $("api-key");
    state.key = input.value.trim();
    if (!state.key) return;
    setStatus("Checking the key…");
    showError("");
    try {
      await api("/v1/gallery");
    } catch (err) {
      // 503: the key passed (keys are checked first) but the service is not ready; the gallery panel says why.
      if (!(err instanceof ApiError && err.status === 503)) {
        state.key = null;
        fail(err, "Signing in");
        input.focus();
        return;
      }
    }
    input.value = "";
    sessionStorage.setItem(KEY_STORAGE, state.key);
    enter();
  }

  function enter() {
    $("login").hidden = true;
    $("workspace").hidden = false;
    $("session").hidden = false;
    setStatus("Signed in.");
    refreshGallery();
    $("search-title").focus();
  }

  function signOut() {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    state.readOnly = false;
    forgetImages();
    $("workspace").hidden = true;
    $("session").hidden = true;
    $("login").hidden = false;
    $("results").replaceChildren();
    $("timeline").replaceChildren();
    $("verdict").hidden = true;
    $("unmatched").hidden = true;
    $("api-key").focus();
  }

  // ---- the gallery panel ---------------------------------------------------------------------------------

  async function refreshGallery() {
    const dl = $("gallery-stats");
    let stats = null;
    let readiness;
    try {
      readiness = await (await api("/readyz", { auth: false })).json();
    } catch (err) {
      readiness = { status: err.serverMessage || "not ready" };
    }
    try {
      stats = await (await api("/v1/gallery")).json();
    } catch (err) {
      fail(err, "Reading the gallery");
      if (err instanceof ApiError && err.status === 401) return;
    }
    dl.replaceChildren();
    if (stats) {
      fact(dl, "Items", stats.count);
      fact(dl, "Model", stats.model_id);
      fact(dl, "Embedding size", stats.dim);
      fact(dl, "Index", stats.index_type);
    }
    fact(dl, "Ready", readiness.status === "ready" ? `yes (${readiness.backend})` : `no: ${readiness.status}`);
  }

  // ---- search --------------------------------------------------------------------------------------------

  function unixSeconds(id) {
    const value = $(id).value;
    return value ? String(new Date(value).getTime() / 1000) : null;
  }

  // Several crops are one query: every crop is an "image" part of one request, and the server pools them. The
  // page is served by the same server as the API, so it never meets a server that answers each crop alone.
  function searchForm(files, { personId = null, topK, useFilters = true, byTrack = false }) {
    const form = new FormData();
    for (const file of files) form.append("image", file, file.name);
    form.append("top_k", String(topK));
    if (byTrack) form.append("group_by", "track");
    if (personId !== null) form.append("person_ids", personId);
    if (useFilters) {
      for (const camera of $("cameras").value.split(",").map((c) => c.trim()).filter(Boolean)) form.append("cameras", camera);
      const from = unixSeconds("time-from");
      const to = unixSeconds("time-to");
      if (from !== null) form.append("time_from", from);
      if (to !== null) form.append("time_to", to);
    }
    return form;
  }

  async function runSearch(files, options) {
    return (await api("/v1/search", { method: "POST", form: searchForm(files, options) })).json();
  }

  async function search(event) {
    event.preventDefault();
    const files = [...$("crops").files];
    if (!files.length) {
      showError("Choose at least one crop to search with.");
      $("crops").focus();
      return;
    }
    const total = files.reduce((n, f) => n + f.size, 0);
    const topK = Math.min(Math.max(1, Number($("top-k").value) || 10), LIMITS.maxTopK);
    const results = $("results");
    const button = $("search-button");
    showError("");
    setStatus(`Searching with ${files.length} crop${files.length > 1 ? "s" : ""} (${Math.ceil(total / 1024)} KB)…`);
    results.setAttribute("aria-busy", "true");
    button.disabled = true;
    try {
      const answer = await runSearch(files, { topK, byTrack: $("group-tracks").checked });
      state.crops = files;
      state.hits = answer.hits;
      state.tracks = new Map((answer.tracks || []).map((t) => [t.track_id, t]));
      showResults(answer, files.length);
      setStatus(`${answer.hits.length} result${answer.hits.length === 1 ? "" : "s"}.`);
      $("results-title").focus();
    } catch (err) {
      fail(err, "Searching");
    } finally {
      results.setAttribute("aria-busy", "false");
      button.disabled = false;
    }
  }

  function showVerdict(answer) {
    const p = $("verdict");
    p.hidden = false;
    p.className = "verdict";
    const lead = answer.identities[0];
    const rate = percent(answer.target_far);
    if (answer.verdict === null || answer.threshold === null) {
      p.textContent = "No verdict: neither this gallery nor the model has a calibrated threshold. The scores rank the results but do not say whether the person is known.";
      return;
    }
    if (answer.verdict === "match" && lead) {
      p.classList.add("match");
      p.textContent = `Match: person ${lead.person_id} (score ${score(lead.score)}, threshold ${score(answer.threshold)} for a ${rate} false-alarm rate).`;
    } else {
      p.classList.add("unknown");
      const best = lead ? ` The closest is person ${lead.person_id} at ${score(lead.score)}.` : "";
      p.textContent = `Unknown: no person reaches the threshold ${score(answer.threshold)} for a ${rate} false-alarm rate.${best}`;
    }
    const note = answer.calibration && answer.calibration.note;
    if (note) p.append(el("span", { className: "hint block", text: `Note: ${note}.` }));
  }

  function showResults(answer, nCrops) {
    showVerdict(answer);
    showUnmatched(answer.unmatched_filters || {});
    const tracks = answer.tracks || [];
    const note = [];
    if (nCrops > 1) note.push(`${nCrops} crops, searched as one query (the server pools them).`);
    if (tracks.length) note.push("Grouped by track, best track first.");
    $("results-note").textContent = note.join(" ");
    const results = $("results");
    results.replaceChildren();
    if (!answer.hits.length) {
      results.append(el("p", { text: "No gallery item matches these filters." }));
      return;
    }
    if (!tracks.length) {
      results.append(el("ul", { className: "grid" }, ...answer.hits.map((h) => hitCard(h, answer.threshold))));
      return;
    }
    // Each of the answer's tracks where its best hit ranks (the answer lists them best first); hits outside them (no
    // track, or one erased meanwhile) keep their rank too, consecutive ones together.
    const byId = new Map(tracks.map((t) => [t.track_id, t]));
    const groups = [];
    const open = new Map();
    for (const hit of answer.hits) {
      const track = byId.get(hit.track_id);
      let group = track ? open.get(track.track_id) : groups[groups.length - 1];
      if (!group || (!track && group.track)) {
        group = { track, hits: [] };
        groups.push(group);
        if (track) open.set(track.track_id, group);
      }
      group.hits.push(hit);
    }
    for (const { track, hits } of groups) {
      const head = track ? trackHead(track) : el("h3", { text: "Not in a track" });
      results.append(trackGroup(track ? track.track_id : "", head, hits, answer.threshold));
    }
  }

  function trackHead(track) {
    const span = timeSpan([{ captured_at: track.first_seen }, { captured_at: track.last_seen }]);
    const crops = `${track.n_items} crop${track.n_items === 1 ? "" : "s"}`;
    const who = track.identity_id === null || track.identity_id === undefined ? "not linked" : `identity ${track.identity_id}`;
    const about = ` · camera ${track.camera_id || "unknown"} · ${span} · ${crops} · ${who} · best ${score(track.score)}`;
    return el("h3", { text: `Track ${track.track_id}` }, el("span", { className: "hint", text: about }));
  }

  function trackGroup(track, head, hits, threshold) {
    return el("section", { className: "track", "data-track": track }, head, el("ul", { className: "grid" }, ...hits.map((h) => hitCard(h, threshold))));
  }

  // Filter values no gallery item has (a mistyped camera or person): said plainly, since they explain few results.
  function showUnmatched(unmatched) {
    const names = { cameras: "camera", exclude_cameras: "excluded camera", person_ids: "person" };
    const parts = Object.entries(unmatched)
      .filter(([, values]) => values && values.length)
      .map(([field, values]) => `${names[field] || field} ${values.join(", ")}`);
    const p = $("unmatched");
    p.textContent = parts.length ? `No gallery item has ${parts.join("; ")}: check the spelling.` : "";
    p.hidden = !parts.length;
  }

  function hitCard(hit, threshold) {
    const person = hit.person_id || "not named";
    const facts = el("dl", { className: "facts" });
    fact(facts, "Score", score(hit.score));
    fact(facts, "Camera", hit.camera_id);
    fact(facts, "Seen", formatTime(hit.captured_at));
    fact(facts, "Person", person);
    fact(facts, "Track", hit.track_id);
    fact(facts, "Item", hit.id);
    const above = threshold !== null && threshold !== undefined && hit.score >= threshold;
    const tag = threshold === null || threshold === undefined ? null : el("p", { className: above ? "tag match" : "tag unknown", text: above ? "above threshold" : "below threshold" });
    const path = el("button", { type: "button", text: "Show path", "aria-label": `Show the path of person ${person}` });
    path.addEventListener("click", () => showPath(hit));
    const erase = el("button", { type: "button", className: "danger", text: "Erase…", hidden: state.readOnly, "data-erase": "", "aria-label": `Erase gallery item ${hit.id}` });
    erase.addEventListener("click", () => askErase(hit, erase));
    const alt = `Gallery item ${hit.id}: person ${person}, camera ${hit.camera_id || "unknown"}`;
    return el("li", { className: "hit", "data-hit": String(hit.id) }, thumbnail(hit.id, alt), el("div", { className: "about" }, tag, facts, el("div", { className: "actions" }, path, erase)));
  }

  // ---- a person's path -----------------------------------------------------------------------------------

  // The path of the person in a hit: the identity's timeline across cameras when linking gave the hit's track one
  // (GET /v1/identities/{id}); else the track's crops in time order (GET /v1/tracks/{id}); a hit without a track,
  // the gallery items labelled with its person (searched with the same crops, every camera and time).
  async function showPath(hit) {
    showError("");
    setStatus("Finding where this person was seen…");
    let path;
    try {
      path = await findPath(hit);
    } catch (err) {
      fail(err, "Finding the person's path");
      return;
    }
    $("timeline-note").textContent = path.note;
    $("timeline").replaceChildren(...path.entries);
    $("timeline").classList.toggle("journey", path.journey);
    setStatus(path.status);
    $("timeline-title").focus();
  }

  async function findPath(hit) {
    let identity = null;
    let track = null;
    if (hit.track_id) {
      const known = state.tracks.get(hit.track_id);
      identity = known ? known.identity_id : null;
      if (identity === null || identity === undefined) {
        track = await (await api(`/v1/tracks/${encodeURIComponent(hit.track_id)}`)).json();
        identity = track.identity_id;
      }
    }
    if (identity !== null && identity !== undefined) {
      const { timeline } = await (await api(`/v1/identities/${encodeURIComponent(identity)}`)).json();
      const cameras = new Set(timeline.map((t) => t.camera_id || "unknown")).size;
      return {
        note: `Identity ${identity}: ${timeline.length} track${timeline.length === 1 ? "" : "s"} on ${cameras} camera${cameras === 1 ? "" : "s"} that linking joined, in the order they were seen; each with its best crop.`,
        entries: timeline.map((entry) => timelineEntry(entry, hit.track_id)),
        status: `${timeline.length} sighting${timeline.length === 1 ? "" : "s"} on the path.`,
        journey: true,
      };
    }
    let items;
    let note;
    if (track) {
      items = track.items;
      note = `Track ${track.track_id}: its ${items.length} crop${items.length === 1 ? "" : "s"} in the order they were seen. It is not linked to an identity yet, so other cameras are not shown.`;
    } else if (hit.person_id) {
      items = (await runSearch(state.crops, { personId: hit.person_id, topK: LIMITS.maxTopK, useFilters: false })).hits;
      note = `Person ${hit.person_id}: the gallery items labelled with this person (up to ${LIMITS.maxTopK}), in the order they were seen. This item is in no track, so no linked path exists.`;
    } else {
      items = [hit];
      note = "This item is in no track and names no person: it is its own path.";
    }
    items = [...items].sort((a, b) => (a.captured_at ?? Infinity) - (b.captured_at ?? Infinity));
    return { note, entries: cameraVisits(items).map(visitEntry), status: `${items.length} sighting${items.length === 1 ? "" : "s"} on the path.`, journey: false };
  }

  // One track of an identity's timeline: its camera, when, how many crops, and its best crop.
  function timelineEntry(entry, hitTrack) {
    const here = entry.track_id === hitTrack;
    const facts = el("dl", { className: "facts" });
    fact(facts, "Seen", timeSpan([{ captured_at: entry.first_seen }, { captured_at: entry.last_seen }]));
    fact(facts, "Crops", entry.n_items);
    fact(facts, "Track", entry.track_id);
    const alt = `Best crop of track ${entry.track_id} on camera ${entry.camera_id || "unknown"}`;
    const tag = here ? el("p", { className: "tag match", text: "this result's track" }) : null;
    return el(
      "li",
      { className: here ? "stop here" : "stop", "aria-current": here ? "step" : null },
      el("h3", { text: `Camera ${entry.camera_id || "unknown"}` }),
      el("div", { className: "hit", "data-step": String(entry.best_item_id), "data-step-track": entry.track_id }, thumbnail(entry.best_item_id, alt), el("div", { className: "about" }, tag, facts)),
    );
  }

  // Consecutive items on the same camera are one visit.
  function cameraVisits(items) {
    const visits = [];
    for (const item of items) {
      const last = visits[visits.length - 1];
      if (last && last.camera === item.camera_id) last.items.push(item);
      else visits.push({ camera: item.camera_id, items: [item] });
    }
    return visits;
  }

  function visitEntry(visit) {
    const span = timeSpan(visit.items);
    const head = el("h3", { text: `Camera ${visit.camera || "unknown"}` }, el("span", { className: "hint", text: ` · ${span} · ${visit.items.length} crop${visit.items.length === 1 ? "" : "s"}` }));
    const thumbs = visit.items.map((item) =>
      el("li", { "data-step": String(item.id) }, thumbnail(item.id, `Item ${item.id} at ${formatTime(item.captured_at)}`), el("span", { className: "hint", text: formatClock(item.captured_at) })),
    );
    return el("li", { className: "visit" }, head, el("ul", { className: "strip" }, ...thumbs));
  }

  // ---- erase ---------------------------------------------------------------------------------------------

  function askErase(hit, opener) {
    state.pendingErase = { hit, opener };
    $("erase-what").textContent = `Gallery item ${hit.id}: person ${hit.person_id || "not named"}, camera ${hit.camera_id || "unknown"}, seen ${formatTime(hit.captured_at)}.`;
    $("erase-dialog").showModal();
    $("erase-cancel").focus();
  }

  function closeErase() {
    const pending = state.pendingErase;
    state.pendingErase = null;
    $("erase-dialog").close();
    if (pending && pending.opener.isConnected) pending.opener.focus();
  }

  async function confirmErase() {
    if (!state.pendingErase) return;
    const { hit } = state.pendingErase;
    closeErase();
    setStatus(`Erasing item ${hit.id}…`);
    showError("");
    let receipt;
    let requestId;
    try {
      const response = await api(`/v1/gallery/${encodeURIComponent(hit.id)}`, { method: "DELETE" });
      requestId = response.headers.get("X-Request-ID");
      receipt = await response.json();
    } catch (err) {
      fail(err, `Erasing item ${hit.id}`);
      return;
    }
    for (const card of document.querySelectorAll(`[data-hit="${CSS.escape(String(hit.id))}"], [data-step="${CSS.escape(String(hit.id))}"]`)) (card.closest(".stop") || card).remove();
    for (const group of document.querySelectorAll("[data-results] [data-track]")) {
      if (!group.querySelector("[data-hit]")) group.remove();
    }
    state.hits = state.hits.filter((h) => h.id !== hit.id);
    const when = formatTime(Date.now() / 1000);
    const text = `Erased item ${receipt.id} (person ${hit.person_id || "not named"}, camera ${hit.camera_id || "unknown"}) at ${when}: the server confirmed the deletion${requestId ? ` (reference ${requestId})` : ""}.`;
    $("receipts").prepend(el("p", { className: "receipt", "data-receipt": String(receipt.id), text }));
    setStatus(`Item ${hit.id} erased.`);
    refreshGallery();
  }

  // ---- wiring --------------------------------------------------------------------------------------------

  function showPreviews() {
    const list = $("previews");
    for (const img of list.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    list.replaceChildren(
      ...[...$("crops").files].map((file) => el("li", {}, el("img", { src: URL.createObjectURL(file), alt: `Chosen crop ${file.name}`, height: 96 }))),
    );
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("search-form").addEventListener("submit", search);
    $("sign-out").addEventListener("click", signOut);
    $("gallery-refresh").addEventListener("click", refreshGallery);
    $("crops").addEventListener("change", showPreviews);
    $("erase-cancel").addEventListener("click", closeErase);
    $("erase-confirm").addEventListener("click", confirmErase);
    $("erase-dialog").addEventListener("cancel", (event) => {
      event.preventDefault();
      closeErase();
    });
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) {
      state.key = saved;
      enter();
    } else {
      $("api-key").focus();
    }
  });
})();
