// callhub desk: the supervisor's worklist, call search and today's figures.
// Plain JavaScript, no build step, nothing fetched from elsewhere. Every piece of
// data comes from callhub's own JSON API with the signed-in token, which is kept
// in sessionStorage (gone when the tab closes) and sent in the Authorization
// header, never in a URL. Text is set with textContent only: caller names are
// untrusted input.
(function () {
  "use strict";

  const boot = JSON.parse(document.getElementById("boot").textContent);
  const S = boot.strings;
  const TOKEN = "callhub.token";
  const WHO = "callhub.who";
  const state = {
    token: sessionStorage.getItem(TOKEN),
    who: sessionStorage.getItem(WHO) || "",
    role: null,
    timer: null,
    view: null,
    callsQuery: null,
    callsCursor: null,
    callsSearch: 0,  // the latest search of the calls table (an older answer is dropped)
    smsCursor: null,
    smsSearch: 0,  // the latest search of the outbox table
    seenEntries: null,
    drafts: {},
  };

  // ---- text ---------------------------------------------------------------
  function t(key, vars) {
    let s = Object.prototype.hasOwnProperty.call(S, key) ? S[key] : key;
    if (vars) {
      for (const name of Object.keys(vars)) s = s.split("{" + name + "}").join(String(vars[name]));
    }
    return s;
  }
  function tv(prefix, value) {  // an enum value (outcome, reason, ...) in the UI language
    if (value === null || value === undefined || value === "") return "—";
    const key = prefix + "." + value;
    return Object.prototype.hasOwnProperty.call(S, key) ? S[key] : String(value);
  }

  // ---- DOM ----------------------------------------------------------------
  // Bidi overrides, embeddings and isolates in a caller's name could make it show as
  // another name (or reorder what follows it); no text the desk shows needs them.
  const BIDI_CONTROLS = /[\u202A-\u202E\u2066-\u2069]/g;
  const plain = (v) => String(v).replace(BIDI_CONTROLS, "");
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = plain(v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(plain(c)));
    }
    return el;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }
  const main = () => document.getElementById("main");

  function toast(text, kind) {
    const box = document.getElementById("toast");
    box.textContent = text;
    box.className = "toast show " + (kind || "ok");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.className = "toast"; }, 4000);
  }

  // ---- formatting ---------------------------------------------------------
  const tz = boot.timezone;
  // Dates as the browser writes them in the page's language (so they read like the date
  // inputs, which follow the browser): its own variant of that language, else a default.
  const locale = (navigator.languages || [navigator.language]).find(
    (l) => l && l.toLowerCase().split("-")[0] === boot.lang) || (boot.lang === "zh" ? "zh-CN" : "en-GB");
  const fmtTime = new Intl.DateTimeFormat(locale, { timeZone: tz, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  const fmtDateTime = new Intl.DateTimeFormat(locale, { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false });
  const fmtDay = new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" });
  const time = (iso) => (iso ? fmtTime.format(new Date(iso)) : "—");
  const dateTime = (iso) => (iso ? fmtDateTime.format(new Date(iso)) : "—");
  const today = () => fmtDay.format(new Date());
  function addDays(day, n) {
    const d = new Date(day + "T12:00:00Z");
    d.setUTCDate(d.getUTCDate() + n);
    return d.toISOString().slice(0, 10);
  }
  function secs(v) {
    if (v === null || v === undefined) return "—";
    return t("unit.seconds", { n: Math.round(v) });
  }
  // A text counting `n` things: its `one` form for 1, else `many` (English said "1 rings").
  function counted(n, one, many, vars) {
    return t(n === 1 ? one : many, vars);
  }
  function ringCount(n) {  // "1 ring", "3 rings"
    return counted(n, "unit.ring", "unit.rings", { n });
  }
  function duration(v) {
    if (v === null || v === undefined) return "—";
    v = Math.round(v);
    if (v < 60) return t("unit.seconds", { n: v });
    if (v < 3600) return t("unit.minutes", { n: Math.round(v / 60) });
    if (v < 86400) return t("unit.hours", { n: (v / 3600).toFixed(1) });
    return t("unit.days", { n: (v / 86400).toFixed(1) });
  }
  function ago(iso) {
    return t("ago", { d: duration(Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000)) });
  }
  const pct = (v) => (v === null || v === undefined ? "—" : (v * 100).toFixed(1) + "%");

  // ---- API ----------------------------------------------------------------
  // The server's error codes the desk has words for (else it shows the server's sentence).
  const SERVER_ERRORS = { starting: "error.starting", database_unavailable: "error.databaseUnavailable",
    conflict: "error.conflict", not_found: "error.notFound", bad_parameter: "error.badInput",
    bad_request: "error.badInput" };
  class ApiError extends Error {
    constructor(status, message, code) { super(message); this.status = status; this.code = code; }
  }
  async function api(path, options) {
    const opts = Object.assign({ method: "GET" }, options || {});
    const headers = { Authorization: "Bearer " + state.token, Accept: opts.accept || "application/json" };
    let body;
    if (opts.body !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(opts.body); }
    let resp;
    try {
      resp = await fetch(path, { method: opts.method, headers, body, cache: "no-store", credentials: "omit" });
    } catch (e) { throw new ApiError(0, t("error.network")); }  // no answer: callhub or the network is down
    if (resp.status === 401) { signOut(t("signin.expired")); throw new ApiError(401, t("signin.expired")); }
    if (!resp.ok) {
      let message = resp.statusText, code;
      try {
        const problem = await resp.json();
        code = problem.error;
        // In the desk's language; the server's sentence (in English) follows as the detail.
        // A change the database did not confirm (it hung, or went away) may be saved or
        // not: not "try again", which could add a follow-up twice; what was typed stays.
        const key = code === "database_unavailable" && opts.method !== "GET"
          ? "error.changeNotConfirmed" : SERVER_ERRORS[code];
        message = Object.hasOwn(SERVER_ERRORS, code)
          ? t(key, { message: problem.message || "" }) : problem.message || message;
      } catch (e) { /* not JSON */ }
      throw new ApiError(resp.status, message, code);
    }
    if (opts.raw) return resp;
    return resp.json();
  }
  function qs(params) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") p.set(k, v);
    return p.toString();
  }

  // ---- shell --------------------------------------------------------------
  const canSeeNumbers = () => state.role === "supervisor" || state.role === "admin";

  function renderShell() {
    document.getElementById("who").textContent = state.role ? t("role." + state.role) + (state.who ? " · " + state.who : "") : "";
    document.getElementById("signout").hidden = !state.role;
    document.getElementById("nav").hidden = !state.role;
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.dataset.view === state.view);
    }
  }

  function setLanguage(lang) {
    document.cookie = "callhub_lang=" + lang + "; path=/desk; max-age=31536000; SameSite=Strict";
    location.reload();
  }

  function stopTimer() { if (state.timer) { clearInterval(state.timer); state.timer = null; } }

  function route() {
    stopTimer();
    if (!state.role) { state.view = "signin"; renderShell(); return viewSignIn(); }
    const hash = location.hash.replace(/^#\/?/, "");
    const [name, arg] = hash.split("/");
    state.view = name === "call" ? "calls" : (["worklist", "calls", "today", "sms"].includes(name) ? name : null);
    if (!state.view) { location.hash = canSeeNumbers() ? "#/worklist" : "#/today"; return; }
    renderShell();
    if (state.view !== "today" && !canSeeNumbers()) return viewNeedsSupervisor();
    if (name === "call") return viewCall(Number(arg));
    if (name === "worklist") return viewWorklist();
    if (name === "calls") return viewCalls();
    if (name === "sms") return viewSms();
    return viewToday();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN);
    state.token = null;
    state.role = null;
    stopTimer();
    route();
    if (message) toast(message, "error");
  }

  async function checkToken(token) {
    const resp = await fetch("/desk/session", { headers: { Authorization: "Bearer " + token }, cache: "no-store", credentials: "omit" });
    if (!resp.ok) return null;
    return (await resp.json()).role;
  }

  // ---- sign in ------------------------------------------------------------
  function viewSignIn() {
    const err = h("p", { class: "error", id: "signin-error", role: "alert" });
    const token = h("input", { id: "token", type: "password", autocomplete: "current-password", required: true });
    const who = h("input", { id: "who-name", type: "text", autocomplete: "name", maxlength: boot.who_limit, value: state.who });
    const form = h("form", { class: "card signin", id: "signin", onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      const role = await checkToken(token.value.trim());
      if (!role) { err.textContent = t("signin.bad"); return; }
      state.token = token.value.trim();
      state.who = who.value.trim();
      state.role = role;
      sessionStorage.setItem(TOKEN, state.token);
      sessionStorage.setItem(WHO, state.who);
      // A changed hash routes through its hashchange event; routing here as well drew
      // the view twice, and a view the supervisor had opened meanwhile was drawn again
      // over what they had typed in it.
      const home = canSeeNumbers() ? "#/worklist" : "#/today";
      if (location.hash === home) route(); else location.hash = home;
    } },
      h("h2", { text: t("signin.title") }),
      h("p", { class: "hint", text: t("signin.hint") }),
      h("label", { for: "token", text: t("signin.token") }), token,
      h("label", { for: "who-name", text: t("signin.name") }), who,
      h("button", { type: "submit", class: "primary", id: "signin-button", text: t("signin.button") }),
      err);
    main().replaceChildren(form);
    token.focus();
  }

  function viewNeedsSupervisor() {
    main().replaceChildren(h("div", { class: "card" }, h("p", { text: t("needs.supervisor") })));
  }

  function errorBox(e) {
    return h("p", { class: "error", role: "alert", text: t("error.load", { message: e.message }) });
  }

  // ---- worklist -----------------------------------------------------------
  function entryWait(entry) {
    let longest = null;
    for (const c of entry.calls || []) if (c.wait_seconds !== null && (longest === null || c.wait_seconds > longest)) longest = c.wait_seconds;
    return longest;
  }
  function entryName(entry) {
    for (const c of (entry.calls || []).slice().reverse()) if (c.caller_name) return c.caller_name;
    return "";
  }

  async function markEntry(entry, status, note) {
    const body = { who: state.who || t("role." + state.role) };
    if (note) body.note = note;
    await api("/api/v1/worklist/" + entry.id + "/" + (status === "handled" ? "handled" : "dismiss"), { method: "POST", body });
  }

  function entryRow(entry, isNew) {
    const note = h("input", { type: "text", class: "note", maxlength: boot.note_limit, placeholder: t("worklist.note"), "aria-label": t("worklist.note"), value: state.drafts[entry.id] || "",
      oninput: (ev) => { state.drafts[entry.id] = ev.target.value; } });
    const act = (status) => async (ev) => {
      ev.target.disabled = true;
      try {
        await markEntry(entry, status, note.value.trim());
        delete state.drafts[entry.id];
        toast(t(status === "handled" ? "worklist.done" : "worklist.dismissed", { number: entry.number }));
        await refreshWorklist();
      } catch (e) {
        ev.target.disabled = false;
        if (e.code !== "conflict") { toast(e.message, "error"); return; }
        // Closed by another meanwhile: its row goes at once; the note typed here is shown,
        // not lost with it.
        const typed = note.value.trim();
        delete state.drafts[entry.id];
        toast(e.message + (typed ? " " + t("worklist.noteNotSaved", { note: typed }) : ""), "error");
        await refreshWorklist();
      }
    };
    const last = (entry.calls || [])[entry.calls.length - 1];
    return h("tr", { "data-entry": entry.id, class: isNew ? "new" : null },
      h("td", {}, h("span", { class: "number", text: entry.number }), entryName(entry) ? h("div", { class: "name", text: entryName(entry) }) : null),
      h("td", { text: entry.line || "—" }),
      h("td", { class: "num", text: entry.call_count }),
      h("td", {}, dateTime(entry.first_missed_at), h("div", { class: "sub ago", "data-at": entry.first_missed_at, text: ago(entry.first_missed_at) })),
      h("td", {}, dateTime(entry.last_missed_at), last ? h("div", { class: "sub", text: tv("outcome", last.outcome) }) : null),
      h("td", { class: "num", text: secs(entryWait(entry)) }),
      h("td", {}, note),
      h("td", { class: "actions" },
        h("button", { class: "primary", "data-action": "handled", onclick: act("handled"), text: t("worklist.calledBack") }),
        h("button", { "data-action": "dismiss", onclick: act("dismissed"), text: t("worklist.dismiss") }),
        last ? h("a", { href: "#/call/" + last.id, class: "link", text: t("worklist.open") }) : null));
  }

  // ---- resolution and satisfaction ---------------------------------------
  const RESOLUTIONS = ["resolved", "referred", "pending", "unresolved"];
  const SATISFACTIONS = ["satisfied", "fair", "dissatisfied", "unreachable"];
  function satisfactionSelect(current) {
    return h("select", { "data-field": "satisfaction", "aria-label": t("followups.satisfaction") },
      h("option", { value: "", text: "—" }),
      SATISFACTIONS.map((k) => h("option", { value: k, selected: k === current, text: tv("sat", k) })));
  }
  function resolutionText(c) {
    if (!c.resolution) return t("resolution.none");
    const what = tv("res", c.resolution) + (c.resolution_department ? " → " + c.resolution_department : "");
    return t("resolution.setBy", { what, who: c.resolution_by || "—", when: dateTime(c.resolution_at) });
  }

  function resolutionCard(c) {
    const shown = h("p", { id: "call-resolution", text: resolutionText(c) });
    const pick = h("select", { id: "resolution" }, h("option", { value: "", text: "—" }),
      RESOLUTIONS.map((k) => h("option", { value: k, selected: k === c.resolution, text: tv("res", k) })));
    const department = h("input", { id: "department", type: "text", maxlength: 128, value: c.resolution_department || "" });
    const deptLabel = h("label", { id: "department-label" }, t("resolution.department"), department);
    const sync = () => { deptLabel.hidden = pick.value !== "referred"; };
    pick.addEventListener("change", sync);
    sync();
    return h("section", { class: "card" }, h("h3", { text: t("resolution.title") }), shown,
      h("div", { class: "filters" },
        h("label", {}, t("resolution.label"), pick), deptLabel,
        h("div", { class: "buttons" }, h("button", { class: "primary", id: "save-resolution", onclick: async () => {
          const body = { resolution: pick.value || null };
          if (pick.value === "referred") body.department = department.value.trim();
          if (pick.value && state.who) body.who = state.who;
          try {
            const updated = await api("/api/v1/calls/" + c.id, { method: "PATCH", body });
            shown.textContent = resolutionText(updated);
            toast(t("resolution.saved"));
          } catch (e) { toast(e.message, "error"); }
        }, text: t("resolution.save") }))));
  }

  function dueBadge(f) {
    return f.overdue ? h("span", { class: "badge bad", text: t("followups.overdue") })
      : h("span", { class: "badge warn", text: t("followups.due") });
  }

  function followupRow(f) {
    const note = h("input", { type: "text", class: "note", maxlength: boot.note_limit, placeholder: t("worklist.note"), "aria-label": t("worklist.note") });
    const satisfaction = satisfactionSelect();
    const close = (what) => async (ev) => {
      ev.target.disabled = true;
      try {
        const body = { who: state.who || t("role." + state.role) };
        if (note.value.trim()) body.note = note.value.trim();
        if (what === "done" && satisfaction.value) body.satisfaction = satisfaction.value;
        await api("/api/v1/followups/" + f.id + "/" + what, { method: "POST", body });
        toast(t(what === "done" ? "followups.closed" : "followups.cancelled", { number: f.number }));
        await refreshWorklist();
      } catch (e) {
        ev.target.disabled = false;
        if (e.code !== "conflict") { toast(e.message, "error"); return; }
        // Closed by another (or a callback) meanwhile: as a worklist entry, its row goes at
        // once and what was typed here is shown, not lost when the next poll drops the row.
        const typed = [note.value.trim(), satisfaction.value ? tv("sat", satisfaction.value) : ""]
          .filter(Boolean).join(" · ");
        toast(e.message + (typed ? " " + t("worklist.noteNotSaved", { note: typed }) : ""), "error");
        await refreshWorklist();
      }
    };
    return h("tr", { "data-followup": f.id, class: f.overdue ? "overdue" : null },
      h("td", {}, h("span", { class: "number", text: f.number }), f.caller_name ? h("div", { class: "name", text: f.caller_name }) : null),
      h("td", { text: tv("category", f.category || f.call_category) }),
      h("td", {}, dateTime(f.due_at), " ", dueBadge(f)),
      h("td", { text: f.note || "" }),
      h("td", {}, note),
      h("td", {}, satisfaction),
      h("td", { class: "actions" },
        h("button", { class: "primary", "data-action": "followup-done", onclick: close("done"), text: t("followups.done") }),
        h("button", { "data-action": "followup-cancel", onclick: close("cancel"), text: t("followups.cancel") }),
        h("a", { href: "#/call/" + f.call_id, class: "link", text: t("worklist.open") })));
  }

  function viewWorklist() {
    main().replaceChildren(
      h("section", { class: "card" },
        h("div", { class: "head" },
          h("h2", { text: t("worklist.title") }),
          h("span", { class: "count", id: "worklist-count" }),
          h("span", { class: "live", id: "live", text: t("live.waiting") })),
        h("p", { class: "hint", text: t("worklist.hint") }),
        h("table", { id: "worklist" },
          h("thead", {}, h("tr", {}, ["worklist.number", "worklist.line", "worklist.times", "worklist.first", "worklist.last", "worklist.wait", "worklist.note", ""].map((k) => h("th", { text: k ? t(k) : "" })))),
          h("tbody", {})),
        h("p", { class: "empty", id: "worklist-empty", hidden: true, text: t("worklist.empty") })),
      h("section", { class: "card" },
        h("div", { class: "head" }, h("h2", { text: t("followups.title") }), h("span", { class: "count", id: "followups-count" })),
        h("table", { id: "followups" },
          h("thead", {}, h("tr", {}, ["worklist.number", "calls.category", "followups.dueAt", "calls.note", "worklist.note", "followups.satisfaction", ""].map((k) => h("th", { text: k ? t(k) : "" })))),
          h("tbody", {})),
        h("p", { class: "empty", id: "followups-empty", hidden: true, text: t("followups.empty") })));
    state.seenEntries = null;
    refreshWorklist();
    state.timer = setInterval(refreshWorklist, boot.poll_seconds * 1000);
  }

  function liveLost(live, e) {  // a live view's refresh failed: it retries at the next
    if (!live) return;
    live.textContent = t(e.code === "starting" ? "live.starting" : "live.lost");
    live.className = "live lost";
  }

  async function refreshWorklist() {
    if (document.hidden && state.seenEntries !== null) return;  // a background tab waits
    const live = document.getElementById("live");
    let entries, due;
    try {
      [entries, due] = await Promise.all([
        api("/api/v1/worklist?" + qs({ status: "pending", limit: boot.list_limit })),
        api("/api/v1/followups?" + qs({ status: "open", due: "yes", limit: boot.list_limit })),
      ]);
    } catch (e) {
      liveLost(live, e);
      return;
    }
    if (state.view !== "worklist" || !document.getElementById("worklist")) return;
    live.textContent = t("live.updated", { time: time(new Date().toISOString()) });
    live.className = "live ok";
    const seen = state.seenEntries;
    const body = document.querySelector("#worklist tbody");
    // Keep a row whose entry did not change (a note being typed keeps its focus).
    const old = new Map([...body.children].map((tr) => [tr.dataset.entry, tr]));
    const rows = entries.items.map((e) => {
      const sig = [e.id, e.call_count, e.last_missed_at].join("|");
      const keep = old.get(String(e.id));
      if (keep && keep.dataset.sig === sig) return keep;
      const tr = entryRow(e, seen !== null && !seen.has(e.id));
      tr.dataset.sig = sig;
      return tr;
    });
    body.replaceChildren(...rows);
    for (const el of body.querySelectorAll(".ago")) el.textContent = ago(el.dataset.at);  // kept rows too
    state.seenEntries = new Set(entries.items.map((e) => e.id));
    document.getElementById("worklist-count").textContent = entries.next_cursor
      ? t("worklist.count_more", { n: entries.items.length })
      : t("worklist.count", { n: entries.items.length });
    document.getElementById("worklist-empty").hidden = entries.items.length > 0;
    const fbody = document.querySelector("#followups tbody");
    const fold = new Map([...fbody.children].map((tr) => [tr.dataset.followup, tr]));
    fbody.replaceChildren(...due.items.map((f) => {
      const sig = [f.id, f.due_at, f.category, f.note].join("|");
      const keep = fold.get(String(f.id));
      if (keep && keep.dataset.sig === sig) {  // a note or answer being entered stays
        keep.className = f.overdue ? "overdue" : "";
        keep.querySelector(".badge").replaceWith(dueBadge(f));
        return keep;
      }
      const tr = followupRow(f);
      tr.dataset.sig = sig;
      return tr;
    }));
    const overdue = due.items.filter((f) => f.overdue).length;
    document.getElementById("followups-count").textContent = due.next_cursor
      ? t("followups.count_more", { n: due.items.length })
      : t("followups.count", { n: due.items.length, overdue });
    document.getElementById("followups-empty").hidden = due.items.length > 0;
  }

  // ---- calls --------------------------------------------------------------
  const OUTCOMES = ["answered", "abandoned", "missed", "unanswered"];
  const DIRECTIONS = ["inbound", "outbound", "internal"];

  function callsQuery(form) {
    const v = (name) => form.elements[name].value.trim();
    const q = { number: v("number"), agent: v("agent"), line: v("line"), outcome: v("outcome"), direction: v("direction"), resolution: v("resolution") };
    if (v("from")) q.from = v("from");
    if (v("to")) q.to = addDays(v("to"), 1);  // the form's "to" day is included
    return q;
  }

  function viewCalls() {
    const saved = state.callsQuery || { fromDay: today(), toDay: today() };
    const sel = (name, values, prefix, current) => h("select", { name, id: "f-" + name },
      h("option", { value: "", text: t("calls.any") }),
      values.map((v) => h("option", { value: v, selected: v === current, text: tv(prefix, v) })));
    const input = (name, type, value) => h("input", { name, id: "f-" + name, type, value: value || "" });
    const form = h("form", { id: "search", class: "filters", onsubmit: (ev) => { ev.preventDefault(); searchCalls(form, false); } },
      h("label", {}, t("calls.from"), input("from", "date", saved.fromDay)),
      h("label", {}, t("calls.to"), input("to", "date", saved.toDay)),
      h("label", {}, t("calls.number"), input("number", "search", saved.number)),
      h("label", {}, t("calls.agent"), input("agent", "search", saved.agent)),
      h("label", {}, t("calls.line"), input("line", "search", saved.line)),
      h("label", {}, t("calls.outcome"), sel("outcome", OUTCOMES, "outcome", saved.outcome)),
      h("label", {}, t("calls.direction"), sel("direction", DIRECTIONS, "direction", saved.direction)),
      h("label", {}, t("calls.resolution"), sel("resolution", RESOLUTIONS.concat(["none"]), "res", saved.resolution)),
      h("div", { class: "buttons" },
        h("button", { type: "submit", class: "primary", id: "search-button", text: t("calls.search") }),
        h("button", { type: "button", id: "export", onclick: () => exportCsv(form), text: t("calls.export") })));
    main().replaceChildren(
      h("section", { class: "card" }, h("h2", { text: t("calls.title") }), form),
      h("section", { class: "card" },
        h("table", { id: "calls" },
          h("thead", {}, h("tr", {}, ["calls.time", "calls.direction", "calls.number", "calls.line", "calls.agent", "calls.outcome", "calls.rings", "calls.wait", "calls.talk", "calls.category", "calls.resolution"].map((k) => h("th", { text: t(k) })))),
          h("tbody", {})),
        h("p", { class: "empty", id: "calls-empty", hidden: true, text: t("calls.none") }),
        h("button", { id: "more", hidden: true, onclick: () => searchCalls(form, true), text: t("calls.more") })));
    searchCalls(form, false);
  }

  function callRow(c) {
    return h("tr", { class: "click", "data-call": c.id, tabindex: 0, onclick: () => { location.hash = "#/call/" + c.id; },
      onkeydown: (ev) => { if (ev.key === "Enter") location.hash = "#/call/" + c.id; } },
      h("td", { text: dateTime(c.arrived_at) }),
      h("td", { text: tv("direction", c.direction) }),
      h("td", {}, h("span", { class: "number", text: c.external_number || "—" }), c.caller_name && c.direction === "inbound" ? h("div", { class: "name", text: c.caller_name }) : null),
      h("td", { text: c.line || "—" }),
      h("td", { text: c.agent_name || c.agent || "—" }),
      h("td", {}, h("span", { class: "badge o-" + c.outcome, text: tv("outcome", c.outcome) })),
      h("td", { class: "num", text: c.rings }),
      h("td", { class: "num", text: secs(c.wait_seconds) }),
      h("td", { class: "num", text: secs(c.talk_seconds) }),
      h("td", { text: c.category ? tv("category", c.category) : "" }),
      h("td", { class: "resolution", title: c.resolution_department || null,
        text: c.resolution ? tv("res", c.resolution) + (c.resolution_department ? " → " + c.resolution_department : "") : "" }));
  }

  async function searchCalls(form, more) {
    const q = callsQuery(form);
    state.callsQuery = Object.assign({}, q, { fromDay: form.elements.from.value, toDay: form.elements.to.value });
    const body = document.querySelector("#calls tbody");
    if (!more) { body.replaceChildren(); state.callsCursor = null; }
    // Only the latest search fills the table: an earlier one answering later (the view's
    // first search, a filter changed before it came back) would add its rows to these.
    const search = ++state.callsSearch;
    try {
      const page = await api("/api/v1/calls?" + qs(Object.assign({}, q, { limit: 50, cursor: more ? state.callsCursor : null })));
      if (search !== state.callsSearch || !body.isConnected) return;
      body.append(...page.items.map(callRow));
      state.callsCursor = page.next_cursor;
      document.getElementById("more").hidden = !page.next_cursor;
      document.getElementById("calls-empty").hidden = body.children.length > 0;
    } catch (e) { toast(e.message, "error"); }
  }

  async function exportCsv(form) {
    // The file and the table always agree: a filter changed since the last search is
    // searched too, and the file gets the same query (every page of it).
    const q = callsQuery(form);
    searchCalls(form, false);
    try {
      const resp = await api("/api/v1/calls?" + qs(Object.assign({}, q, { format: "csv" })), { raw: true, accept: "text/csv" });
      const blob = await resp.blob();
      const a = h("a", { href: URL.createObjectURL(blob), download: "calls-" + (form.elements.from.value || "all") + ".csv" });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (e) { toast(e.message, "error"); }
  }

  // ---- one call -------------------------------------------------------------
  function timeline(c) {
    const ev = [];
    const add = (at, key, vars, kind) => { if (at) ev.push({ at, text: t(key, vars), kind: kind || "" }); };
    add(c.arrived_at, c.direction === "outbound" ? "tl.dialled" : "tl.arrived", { number: c.external_number || "—", line: c.line || "—" }, "start");
    for (const a of c.attempts || []) {
      const who = a.agent_name ? a.agent_name + " (" + a.interface + ")" : a.interface;
      add(a.offered_at, "tl.offered", { agent: who });
      if (a.ring_started_at) add(a.ring_started_at, "tl.ringing", { agent: who });
      add(a.ended_at, "tl.attempt", { agent: who, result: tv("result", a.result), ring: secs(a.ring_seconds) }, "a-" + (a.result || ""));
    }
    add(c.answered_at, "tl.answered", { agent: c.agent_name || c.agent || "—", rings: ringCount(c.rings), ring: secs(c.ring_seconds) }, "good");
    for (const tr of c.transfers || []) add(tr.at, "tl.transfer", { type: tv("transfer", tr.type), to: tr.to });
    const end = c.outcome === "answered" ? t("tl.hangup", { by: tv("hangup", c.hangup_by) })
      : t("tl.ended", { outcome: tv("outcome", c.outcome), reason: tv("reason", c.reason) });
    ev.push({ at: c.ended_at, text: end, kind: c.outcome === "answered" ? "end" : "bad" });
    ev.sort((x, y) => new Date(x.at) - new Date(y.at));
    const t0 = new Date(c.arrived_at).getTime();
    return h("ol", { class: "timeline", id: "timeline" }, ev.map((e) =>
      h("li", { class: e.kind }, h("span", { class: "when", text: time(e.at) }),
        h("span", { class: "offset", text: "+" + t("unit.seconds", { n: ((new Date(e.at).getTime() - t0) / 1000).toFixed(1) }) }),
        h("span", { class: "what", text: e.text }))));
  }

  function fact(label, value) { return [h("dt", { text: label }), h("dd", {}, value)]; }

  async function viewCall(id) {
    // Drawn only while its placeholder is shown: a view opened meanwhile (another call,
    // the calls table) is not drawn over when this call's answer comes back.
    const loading = h("p", { class: "hint", text: t("loading") });
    main().replaceChildren(loading);
    let c;
    try { c = await api("/api/v1/calls/" + id); } catch (e) {
      if (loading.isConnected) main().replaceChildren(errorBox(e));
      return;
    }
    if (!loading.isConnected) return;
    const category = h("select", { id: "category" }, h("option", { value: "", text: "—" }),
      boot.categories.map((k) => h("option", { value: k, selected: k === c.category, text: tv("category", k) })));
    const note = h("textarea", { id: "note", rows: 3, maxlength: boot.note_limit });
    note.value = c.note || "";
    const fuList = h("div", { id: "call-followups" });
    const after = h("input", { id: "followup-after", type: "text", value: "24h", size: 6, "aria-label": t("followups.after") });
    main().replaceChildren(
      h("p", {}, h("a", { href: "#/calls", class: "link", text: "← " + t("calls.back") })),
      h("section", { class: "card" },
        h("h2", {}, h("span", { class: "number", id: "call-number", text: c.external_number || "—" }), " ",
          h("span", { class: "badge o-" + c.outcome, text: tv("outcome", c.outcome) })),
        h("dl", { class: "facts" },
          fact(t("calls.name"), c.caller_name || "—"),
          fact(t("calls.direction"), tv("direction", c.direction)),
          fact(t("calls.line"), c.line || "—"),
          fact(t("calls.agent"), c.agent_name || c.agent || "—"),
          fact(t("calls.reason"), tv("reason", c.reason)),
          fact(t("calls.rings"), String(c.rings) + " · " + secs(c.ring_seconds)),
          fact(t("calls.wait"), secs(c.wait_seconds)),
          fact(t("calls.talk"), secs(c.talk_seconds)),
          fact(t("calls.hangupBy"), tv("hangup", c.hangup_by)),
          fact(t("calls.worklist"), c.worklist ? tv("wstatus", c.worklist.status) : "—"),
          fact(t("calls.sms"), h("span", { id: "call-sms", text: c.sms_status ? tv("sms", c.sms_status) : "—" })),
          fact(t("calls.pbx"), c.pbx + " · " + c.linkedid))),
      h("section", { class: "card" }, h("h3", { text: t("calls.timeline") }), timeline(c)),
      h("section", { class: "card" }, h("h3", { text: t("calls.classify") }),
        h("div", { class: "filters" },
          h("label", {}, t("calls.category"), category),
          h("label", { class: "wide" }, t("calls.note"), note),
          h("div", { class: "buttons" }, h("button", { class: "primary", id: "save-call", onclick: async () => {
            try {
              // Only what this supervisor changed since the page loaded: a page opened
              // before another's save would otherwise put back what it showed then.
              const body = {};
              if ((category.value || null) !== (c.category || null)) body.category = category.value || null;
              if ((note.value.trim() || null) !== (c.note || null)) body.note = note.value.trim() || null;
              if (Object.keys(body).length) {
                const updated = await api("/api/v1/calls/" + id, { method: "PATCH", body });
                c.category = updated.category;
                c.note = updated.note;
              }
              const made = await api("/api/v1/calls/" + id + "/followups", { method: "POST", body: { from_rule: true } });
              toast(made.items.length ? counted(made.items.length, "calls.savedRuleOne", "calls.savedRule", { n: made.items.length }) : t("calls.saved"));
              loadCallFollowups(id, fuList);
            } catch (e) { toast(e.message, "error"); }
          }, text: t("calls.save") })))),
      resolutionCard(c),
      h("section", { class: "card" }, h("h3", { text: t("followups.ofCall") }), fuList,
        h("div", { class: "filters" },
          h("label", {}, t("followups.after"), after),
          h("div", { class: "buttons" }, h("button", { id: "add-followup", onclick: async () => {
            try {
              await api("/api/v1/calls/" + id + "/followups", { method: "POST", body: { after: [after.value.trim()], who: state.who || null } });
              loadCallFollowups(id, fuList);
            } catch (e) { toast(e.message, "error"); }
          }, text: t("followups.add") })))));
    loadCallFollowups(id, fuList);
  }

  function followupAnswer(callId, f, box) {
    // A done follow-up shows its answer, or lets one be recorded (one closed by a callback).
    if (f.status !== "done") return "";
    if (f.satisfaction) return h("span", { class: "satisfaction", text: tv("sat", f.satisfaction) });
    const pick = satisfactionSelect();
    return h("span", {}, pick, " ", h("button", { "data-action": "rate", onclick: async () => {
      if (!pick.value) return;
      try {
        await api("/api/v1/followups/" + f.id, { method: "PATCH", body: { satisfaction: pick.value, who: state.who || null } });
        toast(t("followups.rated"));
        loadCallFollowups(callId, box);
      } catch (e) { toast(e.message, "error"); }
    }, text: t("followups.rate") }));
  }

  async function loadCallFollowups(id, box) {
    try {
      const list = await api("/api/v1/calls/" + id + "/followups");
      if (!list.items.length) { box.replaceChildren(h("p", { class: "empty", text: t("followups.none") })); return; }
      box.replaceChildren(h("table", { id: "call-followup-list" }, h("thead", {}, h("tr", {}, ["followups.dueAt", "followups.status", "followups.source", "followups.closedBy", "followups.satisfaction"].map((k) => h("th", { text: t(k) })))),
        h("tbody", {}, list.items.map((f) => h("tr", { class: f.overdue ? "overdue" : null, "data-followup": f.id },
          h("td", {}, dateTime(f.due_at), " ", f.overdue ? h("span", { class: "badge bad", text: t("followups.overdue") }) : (f.due ? h("span", { class: "badge warn", text: t("followups.due") }) : null)),
          h("td", { text: tv("fstatus", f.status) + (f.how ? " · " + tv("how", f.how) : "") }),
          h("td", { text: f.source === "rule" ? t("followups.byRule", { category: tv("category", f.category) }) : t("followups.byHand") }),
          h("td", { text: f.closed_by ? f.closed_by + " · " + dateTime(f.closed_at) : "" }),
          h("td", {}, followupAnswer(id, f, box)))))));
    } catch (e) { box.replaceChildren(errorBox(e)); }
  }

  // ---- today --------------------------------------------------------------
  function targetCard(id, label, value, shown, target, good, targetText) {
    const ok = value === null || value === undefined ? null : good(value);
    return h("div", { class: "figure " + (ok === null ? "" : ok ? "good" : "bad"), id: "fig-" + id },
      h("div", { class: "label", text: label }),
      h("div", { class: "value", text: shown }),
      h("div", { class: "target", text: targetText }));
  }

  function hourChart(groups, day) {
    const byHour = new Array(24).fill(null).map(() => ({ answered: 0, abandoned: 0, missed: 0 }));
    for (const g of groups) {
      const hour = Number(String(g.key).slice(11, 13));
      if (String(g.key).slice(0, 10) === day && hour >= 0 && hour < 24) Object.assign(byHour[hour], { answered: g.answered, abandoned: g.abandoned, missed: g.missed });
    }
    const max = Math.max(1, ...byHour.map((b) => b.answered + b.abandoned + b.missed));
    const W = 720, H = 200, left = 30, bottom = 24, top = 10, bw = (W - left - 10) / 24;
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", id: "hour-chart", role: "img", "aria-label": t("today.chart") });
    svg.append(s("title", {}, t("today.chart")));
    for (const v of [0, Math.ceil(max / 2), max]) {
      svg.append(s("line", { x1: left, x2: W - 10, y1: y(v), y2: y(v), class: "grid" }));
      svg.append(s("text", { x: left - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, v));
    }
    byHour.forEach((b, i) => {
      let base = 0;
      const x = left + i * bw + 2;
      for (const k of ["answered", "abandoned", "missed"]) {
        if (b[k] > 0) {
          const rect = s("rect", { x, width: bw - 4, y: y(base + b[k]), height: y(base) - y(base + b[k]), class: "bar " + k });
          rect.append(s("title", {}, `${String(i).padStart(2, "0")}:00 ${tv("outcome", k)}: ${b[k]}`));
          svg.append(rect);
        }
        base += b[k];
      }
      if (i % 3 === 0) svg.append(s("text", { x: x + (bw - 4) / 2, y: H - 8, class: "axis", "text-anchor": "middle" }, String(i).padStart(2, "0")));
    });
    const legend = h("div", { class: "legend" }, ["answered", "abandoned", "missed"].map((k) => h("span", { class: "key " + k, text: tv("outcome", k) })));
    return h("div", {}, svg, legend);
  }

  // A line's own target ("≤5 rings · ≥80%") and its within-target rate, green when met.
  function targetCells(g, fallback) {
    const rings = g.target_rings === undefined ? fallback.target_rings : g.target_rings;
    const rate = g.answer_rate_target === undefined ? fallback.answer_rate_target : g.answer_rate_target;
    const met = g.within_target_rate === null || g.within_target_rate === undefined ? null : g.within_target_rate >= rate;
    return [h("td", { class: "target", text: t("today.targetValue", { rings: ringCount(rings), rate: pct(rate) }) }),
      h("td", { class: "num within-target " + (met === null ? "" : met ? "good" : "bad"), text: pct(g.within_target_rate) })];
  }

  function groupTable(id, groups, kind, fallback) {
    const cols = kind === "line"
      ? ["today.line", "today.inbound", "today.answered", "today.answerRate", "today.withinRate", "today.target", "today.withinTargetRate", "today.missed", "today.abandoned", "today.pending", "today.medianCallback"]
      : ["today.agent", "today.answered", "today.withinRateAnswered", "today.avgRing", "today.agentHangup", "today.outbound"];
    // The no-agent / no-line group only matters when it has calls of its own kind.
    const shown = groups.filter((g) => g.key || (kind === "line" ? g.inbound : g.answered + g.outbound));
    const rows = shown.map((g) => {
      const name = kind === "line" ? (g.key || t("today.noLine")) : (g.key ? (g.agent_name ? g.agent_name + " (" + g.key + ")" : g.key) : t("today.noAgent"));
      if (kind === "line") {
        const num = (v) => h("td", { class: "num", text: v });
        return h("tr", { "data-line": g.key || "" }, h("td", { text: name }),
          [g.inbound, g.answered, pct(g.answer_rate), pct(g.within_rings_rate)].map(num),
          targetCells(g, fallback),
          [g.missed, g.abandoned, g.pending_callbacks, duration(g.median_time_to_callback_seconds)].map(num));
      }
      const cells = [g.answered, pct(g.within_rings_rate_answered), secs(g.avg_ring_seconds), pct(g.agent_hangup_first_rate), g.outbound];
      return h("tr", {}, h("td", { text: name }), cells.map((v) => h("td", { class: "num", text: v })));
    });
    return h("table", { id }, h("thead", {}, h("tr", {}, cols.map((k) => h("th", { text: t(k, { rings: ringCount(boot.rings) }) })))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: cols.length, class: "empty", text: t("today.none") }))));
  }

  function showResolution(f, lines, agents) {
    const card = (id, label, rate, detail) => h("div", { class: "figure plain", id: "fig-" + id },
      h("div", { class: "label", text: label }), h("div", { class: "value", text: pct(rate) }),
      h("div", { class: "target", text: detail }));
    const answers = (g) => g.satisfied + g.fair + g.dissatisfied;
    document.getElementById("resolution-figures").replaceChildren(
      card("resolution", t("resolution.rate"), f.resolution_rate, t("resolution.ofSet", { a: f.resolved, n: f.resolutions_set })),
      card("satisfaction", t("satisfaction.rate"), f.satisfaction_rate, counted(answers(f), "satisfaction.ofOneAnswer", "satisfaction.ofAnswers", { a: f.satisfied, n: answers(f), u: f.unreachable })));
    const table = (id, groups, kind) => {
      const shown = groups.filter((g) => g.resolutions_set || answers(g) || g.unreachable);
      const name = (g) => kind === "line" ? (g.key || t("today.noLine")) : (g.key ? (g.agent_name ? g.agent_name + " (" + g.key + ")" : g.key) : t("today.noAgent"));
      const cols = [kind === "line" ? "today.line" : "today.agent", "resolution.set", "resolution.resolved", "resolution.rate", "satisfaction.answers", "satisfaction.satisfied", "satisfaction.rate"];
      const rows = shown.map((g) => h("tr", {}, h("td", { text: name(g) }),
        [g.resolutions_set, g.resolved, pct(g.resolution_rate), answers(g), g.satisfied, pct(g.satisfaction_rate)].map((v) => h("td", { class: "num", text: v }))));
      return h("table", { id }, h("thead", {}, h("tr", {}, cols.map((k) => h("th", { text: t(k) })))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: cols.length, class: "empty", text: t("today.none") }))));
    };
    document.getElementById("resolution-groups").replaceChildren(
      h("h4", { text: t("today.perLine") }), table("resolution-lines", lines, "line"),
      h("h4", { text: t("today.perAgent") }), table("resolution-agents", agents, "agent"));
  }

  // Each call against its own line's ring target; green when every line with calls met its
  // answer-rate target, red when one did not.
  function lineTargetsCard(f, lineTargets) {
    const judged = lineTargets.filter((l) => l.target_met !== null);
    const met = judged.filter((l) => l.target_met).length;
    const ok = judged.length ? met === judged.length : null;
    return h("div", { class: "figure " + (ok === null ? "" : ok ? "good" : "bad"), id: "fig-target" },
      h("div", { class: "label", text: t("today.withinTarget") }),
      h("div", { class: "value", text: pct(f.within_target_rate) }),
      h("div", { class: "target", text: judged.length ? counted(judged.length, "today.linesMetOne", "today.linesMet", { m: met, n: judged.length }) : t("today.noTargetCalls") }));
  }

  function viewToday() {
    const day = h("input", { type: "date", id: "day", value: today(), onchange: () => refreshToday() });
    main().replaceChildren(
      h("section", { class: "card" },
        h("div", { class: "head" }, h("h2", { text: t("today.title") }), h("label", { class: "inline" }, t("today.day"), day),
          h("span", { class: "live", id: "live", text: t("live.waiting") })),
        h("div", { class: "figures", id: "figures" })),
      h("section", { class: "card" }, h("h3", { text: t("today.perHour") }), h("div", { id: "chart" })),
      h("section", { class: "card" }, h("h3", { text: t("today.perLine") }), h("div", { id: "per-line" })),
      h("section", { class: "card" }, h("h3", { text: t("today.perAgent") }), h("div", { id: "per-agent" })),
      h("section", { class: "card" }, h("h3", { text: t("resolution.today") }),
        h("p", { class: "hint", text: t("resolution.defined") }),
        h("div", { class: "figures", id: "resolution-figures" }), h("div", { id: "resolution-groups" })));
    refreshToday();
    state.timer = setInterval(refreshToday, Math.max(boot.poll_seconds, 5) * 1000);
  }

  async function refreshToday() {
    const dayInput = document.getElementById("day");
    if (!dayInput || (document.hidden && document.getElementById("fig-inbound"))) return;
    const day = dayInput.value || today();
    const base = { from: day, to: addDays(day, 1), rings: boot.rings };
    let totals, lines, agents, hours;
    try {
      [totals, lines, agents, hours] = await Promise.all([
        api("/api/v1/stats?" + qs(base)),
        api("/api/v1/stats?" + qs(Object.assign({ group_by: "line" }, base))),
        api("/api/v1/stats?" + qs(Object.assign({ group_by: "agent" }, base))),
        api("/api/v1/stats?" + qs(Object.assign({ group_by: "hour" }, base))),
      ]);
    } catch (e) {
      liveLost(document.getElementById("live"), e);
      return;
    }
    if (state.view !== "today" || !document.getElementById("figures")) return;
    const T = boot.targets;
    const f = totals.totals;
    const callbackMinutes = f.median_time_to_callback_seconds === null ? null : f.median_time_to_callback_seconds / 60;
    document.getElementById("figures").replaceChildren(
      targetCard("within", t("today.withinRate", { rings: ringCount(boot.rings) }), f.within_rings_rate, pct(f.within_rings_rate), T.within_rings_rate, (v) => v >= T.within_rings_rate, t("today.targetAtLeast", { v: pct(T.within_rings_rate) })),
      targetCard("answer", t("today.answerRate"), f.answer_rate, pct(f.answer_rate), T.answer_rate, (v) => v >= T.answer_rate, t("today.targetAtLeast", { v: pct(T.answer_rate) })),
      targetCard("missed", t("today.missed"), f.missed, String(f.missed), T.missed, (v) => v <= T.missed, t("today.targetAtMost", { v: T.missed })),
      targetCard("abandoned", t("today.abandoned"), f.abandoned, String(f.abandoned), T.abandoned, (v) => v <= T.abandoned, t("today.targetAtMost", { v: T.abandoned })),
      targetCard("pending", t("today.pending"), f.pending_callbacks, String(f.pending_callbacks), T.pending_callbacks, (v) => v <= T.pending_callbacks, t("today.targetAtMost", { v: T.pending_callbacks })),
      targetCard("callback", t("today.medianCallback"), callbackMinutes, duration(f.median_time_to_callback_seconds), T.median_time_to_callback_minutes, (v) => v <= T.median_time_to_callback_minutes, t("today.targetAtMost", { v: duration(T.median_time_to_callback_minutes * 60) })),
      h("div", { class: "figure plain", id: "fig-inbound" }, h("div", { class: "label", text: t("today.inbound") }), h("div", { class: "value", text: String(f.inbound) }),
        h("div", { class: "target", text: t("today.answeredOf", { a: f.answered, o: f.outbound }) })),
      lineTargetsCard(f, totals.line_targets || []));
    document.getElementById("chart").replaceChildren(hourChart(hours.groups || [], day));
    document.getElementById("per-line").replaceChildren(groupTable("lines", lines.groups || [], "line", lines.default_target));
    document.getElementById("per-agent").replaceChildren(groupTable("agents", agents.groups || [], "agent"));
    showResolution(f, lines.groups || [], agents.groups || []);
    const live = document.getElementById("live");
    live.textContent = t("live.updated", { time: time(new Date().toISOString()) });
    live.className = "live ok";
  }

  // ---- SMS: the outbox and the opt-out list (supervisor and admin) ---------
  const SMS_STATUSES = ["queued", "sending", "sent", "failed", "expired"];
  const SMS_BADGE = { queued: "warn", sending: "warn", sent: "o-answered", failed: "bad", expired: "bad" };

  function viewSms() {
    const status = h("select", { id: "sms-status", onchange: () => refreshOutbox(false) },
      h("option", { value: "", text: t("outbox.any") }),
      SMS_STATUSES.map((s) => h("option", { value: s, text: tv("sms", s) })));
    const number = h("input", { id: "optout-number", type: "tel", autocomplete: "off", required: true });
    const form = h("form", { id: "optout-form", class: "filters", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const added = await api("/api/v1/sms/optouts", { method: "POST", body: { number: number.value.trim() } });
        number.value = "";
        toast(t("optouts.done", { number: added.number }), "ok");
        refreshOptouts();
      } catch (e) { toast(e.message, "error"); }
    } },
      h("label", {}, t("optouts.number"), number),
      h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", id: "optout-add", text: t("optouts.add") })));
    main().replaceChildren(
      h("section", { class: "card" },
        h("div", { class: "head" }, h("h2", { text: t("outbox.title") }), h("label", { class: "inline" }, t("outbox.status"), status)),
        h("table", { id: "outbox" },
          h("thead", {}, h("tr", {}, ["outbox.queued", "outbox.to", "outbox.line", "outbox.kind", "outbox.status", "outbox.attempts", "outbox.sent", "outbox.error", "outbox.text"].map((k) => h("th", { text: t(k) })))),
          h("tbody", {})),
        h("p", { class: "empty", id: "outbox-empty", hidden: true, text: t("outbox.none") }),
        h("button", { id: "outbox-more", hidden: true, onclick: () => refreshOutbox(true), text: t("outbox.more") })),
      h("section", { class: "card" }, h("h2", { text: t("optouts.title") }), form, h("div", { id: "optouts" })));
    refreshOutbox(false);
    refreshOptouts();
  }

  function outboxRow(m) {
    const go = () => { if (m.call_id) location.hash = "#/call/" + m.call_id; };
    return h("tr", { class: m.call_id ? "click" : "", "data-sms": m.id, "data-status": m.status, tabindex: 0, onclick: go,
      onkeydown: (ev) => { if (ev.key === "Enter") go(); } },
      h("td", { text: dateTime(m.created_at) }),
      h("td", {}, h("span", { class: "number", text: m.to_number })),
      h("td", { text: m.line || "—" }),
      h("td", { text: m.kind === "missed" ? t("outbox.kindMissed") : t("outbox.kindAnswered") }),
      h("td", {}, h("span", { class: "badge sms-status " + (SMS_BADGE[m.status] || ""), text: tv("sms", m.status) })),
      h("td", { class: "num", text: m.attempts }),
      h("td", { text: m.sent_at ? dateTime(m.sent_at) : "—" }),
      h("td", { text: m.last_error || "" }),
      h("td", { class: "sms-text", text: m.text }));
  }

  async function refreshOutbox(more) {
    const body = document.querySelector("#outbox tbody");
    if (!body) return;
    if (!more) { body.replaceChildren(); state.smsCursor = null; }
    const status = document.getElementById("sms-status").value;
    const search = ++state.smsSearch;  // only the latest fills the table (as searchCalls)
    try {
      const page = await api("/api/v1/sms?" + qs({ status, limit: 50, cursor: more ? state.smsCursor : null }));
      if (search !== state.smsSearch || !body.isConnected) return;
      body.append(...page.items.map(outboxRow));
      state.smsCursor = page.next_cursor;
      document.getElementById("outbox-more").hidden = !page.next_cursor;
      document.getElementById("outbox-empty").hidden = body.children.length > 0;
    } catch (e) { toast(e.message, "error"); }
  }

  async function refreshOptouts() {
    const box = document.getElementById("optouts");
    if (!box) return;
    try {
      const list = await api("/api/v1/sms/optouts");
      box.replaceChildren(list.items.length ? h("table", { id: "optout-list" },
        h("thead", {}, h("tr", {}, ["optouts.number", "optouts.added", "optouts.by", ""].map((k) => h("th", { text: k ? t(k) : "" })))),
        h("tbody", {}, list.items.map((o) => h("tr", { "data-number": o.number },
          h("td", {}, h("span", { class: "number", text: o.number })),
          h("td", { text: dateTime(o.created_at) }),
          h("td", { text: o.by ? tv("role", o.by) : "—" }),
          h("td", {}, h("button", { "data-action": "optout-remove", text: t("optouts.remove"), onclick: async () => {
            try {
              await api("/api/v1/sms/optouts?" + qs({ number: o.number }), { method: "DELETE", raw: true });
              toast(t("optouts.removed", { number: o.number }), "ok");
              refreshOptouts();
            } catch (e) {
              toast(e.message, "error");
              if (e.status === 404) refreshOptouts();  // removed by another meanwhile: its row goes
            }
          } })))))) : h("p", { class: "empty", id: "optouts-empty", text: t("optouts.none") }));
    } catch (e) { box.replaceChildren(errorBox(e)); }
  }

  // ---- start --------------------------------------------------------------
  document.getElementById("signout").addEventListener("click", () => signOut(null));
  for (const b of document.querySelectorAll("[data-lang]")) b.addEventListener("click", () => setLanguage(b.dataset.lang));
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    if (state.view === "worklist" && document.getElementById("worklist")) refreshWorklist();
    if (state.view === "today" && document.getElementById("figures")) refreshToday();
  });
  (async () => {
    if (state.token) state.role = await checkToken(state.token);
    if (!state.role && state.token) { sessionStorage.removeItem(TOKEN); state.token = null; }
    route();
  })();
})();
