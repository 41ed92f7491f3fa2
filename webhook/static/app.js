// The kling-chain dashboard: plain JavaScript, no build step.
//
// Every datum comes from the API with the token as a bearer header; the token lives in
// sessionStorage (this tab only) and no cookie is ever used. Text from the API is only ever
// set as textContent, never parsed as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "kling-chain.token";
  const CAP_SECONDS = 180;
  const POLL_MS = 1500;
  const ACCOUNT_POLL_MS = 5000;
  const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
  const ENDED = new Set(["succeeded", "failed", "cancelled"]);

  let pollTimer = null;
  let accountTimer = null;
  let routeSeq = 0; // a route change makes the replies of the previous route stale

  // -- helpers --------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const $ = (id) => document.getElementById(id);
  const dash = "—";

  function seconds(value) {
    return value === null || value === undefined ? dash : `${Number(value).toFixed(1)} s`;
  }

  function span(from, to) {
    if (from === null || from === undefined || to === null || to === undefined) return dash;
    return `${Math.max(0, to - from).toFixed(1)} s`;
  }

  function clock(ts) {
    if (ts === null || ts === undefined) return dash;
    return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
  }

  function when(ts) {
    if (ts === null || ts === undefined) return dash;
    return new Date(ts * 1000).toLocaleString([], { hour12: false });
  }

  function age(ts) {
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) return `${Math.floor(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }

  function badge(status) {
    return h("span", { class: `badge status-${status}`, "data-status": status }, status);
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // -- the token and the API ------------------------------------------------------------------
  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function takeTokenFromFragment() {
    // The demo prints http://host/#token=...: a fragment never reaches the server or its logs.
    const match = location.hash.match(/^#token=([^&]+)/);
    if (!match) return;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", `${location.pathname}${location.search}#/chains`);
  }

  class Unauthorized extends Error {}

  async function api(method, path, body, extraHeaders) {
    const headers = { Authorization: `Bearer ${token()}`, ...(extraHeaders || {}) };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    const reply = await fetch(path, init);
    let data = null;
    try {
      data = await reply.json();
    } catch (_) {
      data = null;
    }
    if (reply.status === 401) {
      logout("The service refused this token: enter it again.");
      throw new Unauthorized("unauthorized");
    }
    return { status: reply.status, ok: reply.ok, data };
  }

  function problem(reply) {
    const message = reply.data && reply.data.error ? reply.data.error : `HTTP ${reply.status}`;
    return `${message} (HTTP ${reply.status})`;
  }

  // -- signing in and out ---------------------------------------------------------------------
  function showLogin(message) {
    stopPolling();
    $("app").hidden = true;
    $("nav").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  async function signIn(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    try {
      const reply = await api("GET", "/chains?limit=1");
      if (!reply.ok) {
        logout(problem(reply));
        return;
      }
    } catch (err) {
      if (!(err instanceof Unauthorized)) logout(`Cannot reach the service: ${err.message}`);
      return;
    }
    $("token").value = "";
    if (!location.hash || location.hash === "#" || location.hash.startsWith("#token=")) {
      location.hash = "#/chains";
    }
    start();
  }

  function start() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("nav").hidden = false;
    refreshAccount();
    clearInterval(accountTimer);
    accountTimer = setInterval(refreshAccount, ACCOUNT_POLL_MS);
    route();
  }

  function stopPolling() {
    clearTimeout(pollTimer);
    pollTimer = null;
    clearInterval(accountTimer);
    accountTimer = null;
  }

  // Run `refresh` now and again every POLL_MS while its route is the current one.
  function poll(seq, refresh) {
    const tick = async () => {
      if (seq !== routeSeq) return;
      try {
        await refresh();
      } catch (err) {
        if (err instanceof Unauthorized) return;
        const note = $("poll-error");
        if (note) note.textContent = `Cannot reach the service: ${err.message}; retrying`;
      }
      if (seq === routeSeq) pollTimer = setTimeout(tick, POLL_MS);
    };
    tick();
  }

  // -- routing --------------------------------------------------------------------------------
  function route() {
    if (!token()) {
      showLogin();
      return;
    }
    routeSeq += 1;
    clearTimeout(pollTimer);
    const hash = location.hash || "#/chains";
    const view = $("view");
    view.replaceChildren();
    let match;
    let nav = "chains";
    if ((match = hash.match(/^#\/chains\/([A-Za-z0-9_.-]+)$/))) {
      chainPage(view, match[1]);
    } else if (hash === "#/new") {
      nav = "new";
      newChainPage(view);
    } else if (hash.startsWith("#/archive")) {
      nav = "archive";
      archivePage(view);
    } else {
      chainsPage(view);
    }
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("current", link.dataset.nav === nav);
    }
  }

  // -- the chains list ------------------------------------------------------------------------
  function progress(chain) {
    const goal = chain.target_seconds || CAP_SECONDS;
    const reached = chain.duration || 0;
    return h(
      "div",
      { class: "progress" },
      h("progress", {
        max: goal,
        value: Math.min(reached, goal),
        "data-duration": reached,
        "aria-label": `seconds reached of ${goal}`,
      }),
      h("span", { class: "progress-text" }, `${reached.toFixed(1)} / ${goal} s`),
    );
  }

  function stepsDone(chain) {
    const done = chain.steps.filter((s) => s.status === "succeed").length;
    const asked = chain.steps_requested === null ? dash : chain.steps_requested;
    return `${done} / ${asked}`;
  }

  function chainsPage(view) {
    const seq = routeSeq;
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    const status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
    const before = params.get("before");
    const filter = h(
      "select",
      {
        id: "status-filter",
        "aria-label": "Filter by status",
        onchange: (e) => {
          location.hash = e.target.value ? `#/chains?status=${e.target.value}` : "#/chains";
        },
      },
      h("option", { value: "" }, "all statuses"),
      STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)),
    );
    const body = h("tbody", { id: "chains-body" });
    const pager = h("div", { class: "pager" });
    view.append(
      h(
        "section",
        { class: "card" },
        h("div", { class: "bar" }, h("h2", {}, "Chains"), filter,
          h("a", { href: "#/new", class: "button" }, "Start a chain")),
        h("p", { id: "poll-error", class: "error", role: "alert" }),
        h(
          "table",
          { class: "chains" },
          h("thead", {}, h("tr", {}, ["Chain", "Status", "Progress", "Steps", "Units", "Age",
            "Waiting"].map((t) => h("th", {}, t)))),
          body,
        ),
        pager,
      ),
    );
    poll(seq, async () => {
      const query = new URLSearchParams({ limit: "20" });
      if (status) query.set("status", status);
      if (before) query.set("before", before);
      const reply = await api("GET", `/chains?${query}`);
      if (seq !== routeSeq) return;
      if (!reply.ok) {
        $("poll-error").textContent = problem(reply);
        return;
      }
      $("poll-error").textContent = "";
      // Filtered here too, for a service that does not filter by status itself.
      const chains = reply.data.chains.filter((c) => !status || c.status === status);
      body.replaceChildren(
        ...chains.map((c) =>
          h(
            "tr",
            { "data-chain": c.id, "data-status": c.status },
            h("td", {}, h("a", { href: `#/chains/${c.id}` }, c.id)),
            h("td", {}, badge(c.status)),
            h("td", {}, progress(c)),
            h("td", {}, stepsDone(c)),
            h("td", {}, c.units === null ? dash : c.units),
            h("td", { title: when(c.created_at) }, age(c.created_at)),
            h("td", { class: "waiting" }, c.waiting || ""),
          ),
        ),
      );
      if (!chains.length) {
        body.append(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No chains yet.")));
      }
      const links = [];
      if (before) links.push(h("a", { href: status ? `#/chains?status=${status}` : "#/chains" },
        "« Newest"));
      if (reply.data.next_before !== null) {
        const next = new URLSearchParams({ before: reply.data.next_before });
        if (status) next.set("status", status);
        links.push(h("a", { href: `#/chains?${next}` }, "Older »"));
      }
      pager.replaceChildren(...links);
    });
  }

  // -- one chain ------------------------------------------------------------------------------
  function chainPage(view, id) {
    const seq = routeSeq;
    const head = h("div", { id: "chain-head" });
    const actions = h("div", { class: "actions" });
    const note = h("p", { id: "action-note", role: "status" });
    const steps = h("tbody", { id: "steps-body" });
    const archive = h("tbody", { id: "archive-body" });
    const player = h("div", { id: "player" }, h("p", { class: "muted" },
      "The final video plays here once it is archived."));
    let playing = null; // the video id the player holds: polls never reload it

    const cancel = h("button", { type: "button", id: "cancel", onclick: () => command("cancel") },
      "Cancel");
    const resume = h("button", { type: "button", id: "resume", onclick: () => command("resume") },
      "Resume");
    actions.append(cancel, resume, note);

    async function command(what) {
      cancel.disabled = resume.disabled = true;
      try {
        const reply = await api("POST", `/chains/${id}/${what}`);
        note.textContent = reply.status === 202 ? `${what} accepted` : problem(reply);
        if (reply.ok) render(reply.data);
      } catch (err) {
        if (!(err instanceof Unauthorized)) note.textContent = `${what} failed: ${err.message}`;
      }
    }

    view.append(
      h("section", { class: "card" },
        h("p", {}, h("a", { href: "#/chains" }, "« All chains")),
        h("h2", {}, `Chain ${id}`),
        h("p", { id: "poll-error", class: "error", role: "alert" }),
        head, actions),
      h("section", { class: "card" }, h("h3", {}, "Final video"), player),
      h("section", { class: "card" }, h("h3", {}, "Steps"),
        h("table", { class: "steps" },
          h("thead", {}, h("tr", {}, ["#", "Kind", "Status", "Task", "Submitted", "Processing",
            "Done", "Took", "Duration", "Units", "Error"].map((t) => h("th", {}, t)))),
          steps)),
      h("section", { class: "card" }, h("h3", {}, "Archive"),
        h("table", { class: "archive" },
          h("thead", {}, h("tr", {}, ["Video", "Status", "Duration", "Bytes", "Where", "Error"]
            .map((t) => h("th", {}, t)))),
          archive)),
    );

    function render(chain) {
      head.replaceChildren(
        h("dl", { class: "facts" },
          h("dt", {}, "Status"), h("dd", { id: "chain-status" }, badge(chain.status)),
          h("dt", {}, "Progress"), h("dd", {}, progress(chain)),
          h("dt", {}, "Steps"), h("dd", {}, stepsDone(chain)),
          h("dt", {}, "Units"), h("dd", {}, chain.units === null ? dash
            : `${chain.units}${chain.units_complete ? "" : " (so far)"}`),
          h("dt", {}, "Started"), h("dd", {}, `${when(chain.created_at)} (${age(chain.created_at)} ago)`),
          chain.end_reason && [h("dt", {}, "Ended"), h("dd", {}, chain.end_reason)],
          chain.waiting && [h("dt", {}, "Waiting"), h("dd", { class: "waiting" }, chain.waiting)],
          chain.error && [h("dt", {}, "Error"), h("dd", { class: "error" }, chain.error)],
        ),
      );
      const ended = ENDED.has(chain.status);
      cancel.disabled = ended || chain.cancelled_at !== null;
      resume.disabled = !(chain.status === "failed" || chain.status === "cancelled");
      steps.replaceChildren(
        ...chain.steps.map((s) =>
          h("tr", { "data-step": s.index, "data-status": s.status },
            h("td", {}, s.index),
            h("td", {}, s.kind),
            h("td", {}, badge(s.status)),
            h("td", { class: "mono" }, s.task_id || dash),
            h("td", {}, clock(s.submitted_at)),
            h("td", {}, clock(s.processing_at)),
            h("td", {}, clock(s.ended_at)),
            h("td", { title: "from submitted to done" }, span(s.submitted_at, s.ended_at)),
            h("td", {}, seconds(s.duration)),
            h("td", {}, s.units === null ? dash : s.units),
            h("td", { class: "error" }, s.error || ""),
          )),
      );
      archive.replaceChildren(
        ...chain.archive.map((a) =>
          h("tr", { "data-video": a.video_id, class: `archive-${a.status}` },
            h("td", { class: "mono" }, a.video_id),
            h("td", {}, badge(a.status)),
            h("td", {}, seconds(a.duration)),
            h("td", {}, a.bytes === null ? dash : a.bytes.toLocaleString()),
            h("td", { class: "mono" }, a.path || dash),
            h("td", { class: "error" }, a.error || ""),
          )),
      );
      const newest = [...chain.steps].reverse().find((s) => s.status === "succeed" && s.video_id);
      const entry = newest && chain.archive.find((a) => a.video_id === newest.video_id);
      if (entry && entry.status === "done" && playing !== entry.video_id) {
        playing = entry.video_id;
        load(entry.video_id);
      }
    }

    async function load(videoId) {
      const reply = await api("GET", `/archive/${encodeURIComponent(videoId)}/url`);
      if (seq !== routeSeq) return;
      if (!reply.ok) {
        player.replaceChildren(h("p", { class: "error" }, problem(reply)));
        playing = null;
        return;
      }
      const video = h("video", {
        id: "final-video",
        controls: true,
        preload: "metadata",
        src: reply.data.url,
        "data-video": videoId,
      });
      player.replaceChildren(video, h("p", { class: "muted" },
        `${videoId}; the link is good until ${clock(reply.data.expires_at)}`));
    }

    poll(seq, async () => {
      const reply = await api("GET", `/chains/${id}`);
      if (seq !== routeSeq) return;
      if (!reply.ok) {
        $("poll-error").textContent = problem(reply);
        return;
      }
      $("poll-error").textContent = "";
      render(reply.data);
    });
  }

  // -- starting a chain -----------------------------------------------------------------------
  const FIELDS = [
    { name: "video_id", label: "Video id to extend", hint: "or a text prompt below" },
    { name: "task_id", label: "Task that made it" },
    { name: "source_duration", label: "Its length (s)", number: true },
    { name: "text_prompt", label: "Text prompt (start from text-to-video)", area: true },
    { name: "text_duration", label: "Text-to-video length (s)", choices: ["", "5", "10"],
      number: true },
    { name: "target_seconds", label: "Target length (s, at most 180)", number: true },
    { name: "steps", label: "Extensions (1 to 60)", number: true },
    { name: "prompt", label: "Prompt for every step", area: true },
    { name: "prompts", label: "One prompt per step", area: true, lines: true,
      hint: "one a line; later steps fall back to the prompt above" },
    { name: "negative_prompt", label: "Negative prompt", area: true },
    { name: "cfg_scale", label: "cfg_scale (0 to 1)", number: true },
    { name: "max_units", label: "Most units it may spend", hint: "e.g. 10 or 2.5" },
  ];

  function newChainPage(view) {
    let key = randomKey(); // one Idempotency-Key per chain: a retried submit never pays twice
    const general = h("p", { id: "form-error", class: "error", role: "alert" });
    const submit = h("button", { type: "submit", id: "start" }, "Start the chain");
    const form = h("form", { id: "chain-form", novalidate: true, autocomplete: "off" },
      general,
      FIELDS.map((f) => {
        const id = `f-${f.name}`;
        let input;
        if (f.choices) {
          input = h("select", { id, name: f.name },
            f.choices.map((c) => h("option", { value: c }, c || "default")));
        } else if (f.area) {
          input = h("textarea", { id, name: f.name, rows: 2 });
        } else {
          input = h("input", { id, name: f.name, type: "text", inputmode: f.number ? "decimal"
            : null, spellcheck: "false" });
        }
        return h("div", { class: "field" },
          h("label", { for: id }, f.label),
          input,
          f.hint && h("small", { class: "muted" }, f.hint),
          h("span", { class: "field-error error", "data-error-for": f.name }));
      }),
      submit);
    form.addEventListener("input", () => { key = randomKey(); }, { passive: true });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
      general.textContent = "";
      const body = {};
      for (const f of FIELDS) {
        const raw = form.elements[f.name].value.trim();
        if (!raw) continue;
        const n = Number(raw);
        if (f.lines) body[f.name] = raw.split("\n").map((l) => l.trim()).filter(Boolean);
        else body[f.name] = f.number && Number.isFinite(n) ? n : raw; // the API judges the rest
      }
      submit.disabled = true;
      try {
        const reply = await api("POST", "/chains", body, { "Idempotency-Key": key });
        if (reply.ok) {
          key = randomKey();
          location.hash = `#/chains/${reply.data.id}`;
          return;
        }
        general.textContent = reply.data && reply.data.error ? reply.data.error : problem(reply);
        for (const d of (reply.data && reply.data.details) || []) {
          const top = d.field ? d.field.split(".")[0] : null; // "prompts.2": the prompts field
          const slot = top && form.querySelector(`[data-error-for="${CSS.escape(top)}"]`);
          if (slot) slot.textContent = top === d.field ? d.message : `${d.field}: ${d.message}`;
          else general.append(h("span", { class: "detail" }, ` ${d.message}`));
        }
      } catch (err) {
        // Sent or not, the same key goes with the next try: the service starts one chain.
        if (!(err instanceof Unauthorized)) general.textContent = `Not sent: ${err.message}`;
      } finally {
        submit.disabled = false;
      }
    });
    view.append(h("section", { class: "card" }, h("h2", {}, "Start a chain"),
      h("p", { class: "muted" }, "Checked by the service as the API checks it; nothing is " +
        "stored or paid for when it is refused."), form));
  }

  // -- the archive ----------------------------------------------------------------------------
  function archivePage(view) {
    const seq = routeSeq;
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    const state = ["pending", "archived", "lost"].includes(params.get("state"))
      ? params.get("state") : "";
    const counts = h("p", { id: "archive-counts" });
    const body = h("tbody", { id: "manifest-body" });
    const pager = h("div", { class: "pager" });
    const filter = h("select", {
      id: "state-filter",
      "aria-label": "Filter by state",
      onchange: (e) => {
        location.hash = e.target.value ? `#/archive?state=${e.target.value}` : "#/archive";
      },
    }, h("option", { value: "" }, "all states"),
    ["pending", "archived", "lost"].map((s) => h("option", { value: s, selected: s === state },
      s)));
    view.append(h("section", { class: "card" },
      h("div", { class: "bar" }, h("h2", {}, "Archive"), filter),
      h("p", { class: "muted" }, "The provider deletes a video 30 days after it was made."),
      h("p", { id: "poll-error", class: "error", role: "alert" }),
      counts,
      h("table", { class: "manifest" },
        h("thead", {}, h("tr", {}, ["Video", "State", "Chain", "Duration", "Bytes", "Made",
          "Deleted by provider", "Days left", "Error"].map((t) => h("th", {}, t)))),
        body),
      pager));
    poll(seq, async () => {
      const query = new URLSearchParams({ limit: "50" });
      if (state) query.set("state", state);
      if (params.get("before")) query.set("before", params.get("before"));
      const reply = await api("GET", `/archive?${query}`);
      if (seq !== routeSeq) return;
      if (!reply.ok) {
        $("poll-error").textContent = problem(reply);
        return;
      }
      $("poll-error").textContent = "";
      const c = reply.data.counts || {};
      counts.textContent = `${c.archived || 0} archived, ${c.pending || 0} pending, ` +
        `${c.lost || 0} lost`;
      const now = Date.now() / 1000;
      body.replaceChildren(...reply.data.videos.map((v) => {
        const left = (v.expires_at - now) / 86400;
        const risk = v.state === "lost" ? "lost" : v.at_risk ? "at-risk" : "";
        return h("tr", { "data-video": v.video_id, class: risk ? `row-${risk}` : null },
          h("td", { class: "mono" }, v.video_id),
          h("td", {}, badge(v.state), v.at_risk ? h("span", { class: "badge at-risk" }, "at risk")
            : null),
          h("td", {}, v.chain_id ? h("a", { href: `#/chains/${v.chain_id}` }, v.chain_id) : dash),
          h("td", {}, seconds(v.duration)),
          h("td", {}, v.bytes === null ? dash : v.bytes.toLocaleString()),
          h("td", {}, when(v.created_at)),
          h("td", {}, when(v.expires_at)),
          h("td", { class: "days-left" }, left <= 0 ? "deleted" : left.toFixed(1),
            v.state === "archived" ? h("span", { class: "muted" }, " (kept here)") : null),
          h("td", { class: "error" }, v.error || ""));
      }));
      if (!reply.data.videos.length) {
        body.append(h("tr", {}, h("td", { colspan: 9, class: "empty" }, "Nothing archived yet.")));
      }
      const links = [];
      if (reply.data.next_before !== null) {
        const next = new URLSearchParams({ before: reply.data.next_before });
        if (state) next.set("state", state);
        links.push(h("a", { href: `#/archive?${next}` }, "Older »"));
      }
      pager.replaceChildren(...links);
    });
  }

  // -- the account panel ----------------------------------------------------------------------
  function budgetText(budget) {
    if (!budget) return "no budget set";
    if (typeof budget !== "object") return String(budget);
    const parts = [`${budget.spent} of ${budget.daily_units} units`];
    if (budget.reserved !== undefined) parts.push(`${budget.reserved} reserved`);
    if (budget.remaining !== undefined) parts.push(`${budget.remaining} left`);
    const resets = Date.parse(budget.resets_at);
    if (Number.isFinite(resets)) parts.push(`resets ${when(resets / 1000)}`);
    return parts.join(", ");
  }

  async function refreshAccount() {
    if (!token()) return;
    try {
      const [account, spend] = await Promise.all([
        api("GET", "/account"),
        api("GET", "/spend?days=1"),
      ]);
      const a = account.ok ? account.data : null;
      const s = spend.ok ? spend.data : null;
      $("acct-slots").textContent = a && a.slots
        ? `${a.slots.in_use} / ${a.slots.limit === null ? "no limit" : a.slots.limit}` : dash;
      const units = a ? a.units_today : s ? s.today.units : null;
      $("acct-units").textContent = units === null || units === undefined ? dash : String(units);
      // /account may not carry the budget yet: /spend does (null when none is set).
      const budget = (a && a.budget) || (s && s.budget) || null;
      $("acct-budget").textContent = a || s ? budgetText(budget) : dash;
      $("acct-refused").textContent = a && a.refused_creates
        ? `${a.refused_creates.last_hour} (${a.refused_creates.total} in all)` : dash;
    } catch (_) {
      // The panel keeps its last figures; the page's own view reports the outage.
    }
  }

  // -- start ----------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    takeTokenFromFragment();
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => logout("Signed out."));
    window.addEventListener("hashchange", () => {
      takeTokenFromFragment();
      if (token()) route();
    });
    if (token()) start();
    else showLogin();
  });
})();
