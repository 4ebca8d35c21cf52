// The pages' one script (web/pages.py): the console, the fan page and the overlay. Everything shown comes from the
// JSON API and is put into the page with textContent (never innerHTML). Live: each page opens the event stream
// with a single-use ticket and, on each event, reads again what that event changed; no reload, no polling.
"use strict";

function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

// One refresh at a time: the refresh token is single-use, and spending it twice would end the sign-in session.
let refreshing = null;
function refreshCookies() {
  if (!refreshing) {
    refreshing = fetch("/console/refresh", {
      method: "POST", credentials: "same-origin", headers: {"X-CSRF-TOKEN": cookie("perfmenu_csrf_refresh")},
    }).then((r) => { refreshing = null; return r.ok; }, () => { refreshing = null; return false; });
  }
  return refreshing;
}

function toLogin() {
  location.assign("/console/login?next=" + encodeURIComponent(location.pathname + location.search));
}

// A JSON API call with the sign-in cookies (and the CSRF value on writes); an expired access token is refreshed
// once and the call repeated. Answers {status, data}. `extraHeaders` is the overlay's key: such a call is not
// signed in, so a 401 leads to no refresh and no login page.
async function api(method, path, body, extraHeaders) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = Object.assign({"Accept": "application/json"}, extraHeaders || {});
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRF-TOKEN"] = cookie("perfmenu_csrf_access");
    const r = await fetch(path, {method, headers, credentials: "same-origin",
                                 body: body === undefined ? undefined : JSON.stringify(body)});
    const data = r.status === 204 ? null : await r.json().catch(() => null);
    if (r.status === 401 && !extraHeaders) {
      if (attempt === 0 && await refreshCookies()) continue;
      toLogin();
    }
    return {status: r.status, data};
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k === "text") node.textContent = v;
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);  // strings become text nodes
  return node;
}

function $(id) { return document.getElementById(id); }
function setText(id, text) { const n = $(id); if (n) n.textContent = text; }
function errorText(r) { return (r.data && r.data.error && r.data.error.message) || ("HTTP " + r.status); }

function minutesSince(iso) {
  const m = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 60000));
  return m < 60 ? m + " min" : Math.floor(m / 60) + " h " + (m % 60) + " min";
}
function timeOf(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }

// Reads by name, one at a time each: a read asked for while the same read runs is run once more after it (so a
// burst of events costs at most one more read, and an older answer never lands after a newer one).
function batcher(readers) {
  const running = new Set(), again = new Set();
  function run(name) {
    if (running.has(name)) { again.add(name); return; }
    running.add(name);
    Promise.resolve().then(readers[name]).catch(() => {}).finally(() => {
      running.delete(name);
      if (again.delete(name)) run(name);
    });
  }
  return (...names) => names.forEach(run);
}

// The event stream: a ticket (single use) opens it; on an error it is closed, and a new ticket reopens it after
// the last event seen (last_event_id), so nothing is missed.
function live(getTicket, onEvent, onOpen) {
  const types = JSON.parse(document.body.dataset.events);
  let lastId = null, delay = 500, source = null;
  async function open() {
    const t = await getTicket().catch(() => null);
    if (!t || t.status !== 201) { setText("connection", "offline: retrying"); return retry(); }
    let url = t.data.stream_url;
    if (lastId !== null) url += "&last_event_id=" + encodeURIComponent(lastId);
    source = new EventSource(url);
    source.onopen = () => { delay = 500; setText("connection", "live"); onOpen(); };
    source.onerror = () => { source.close(); setText("connection", "reconnecting..."); retry(); };
    for (const type of types) {
      source.addEventListener(type, (e) => {
        if (e.lastEventId) lastId = e.lastEventId;
        if (type === "end") { source.close(); setText("connection", "stream ended"); return; }
        onEvent(type, e.data ? JSON.parse(e.data) : {});
      });
    }
  }
  function retry() { setTimeout(open, delay); delay = Math.min(delay * 2, 10000); }
  open();
}

function wireLogout() {
  // Through the API helper, so an expired access token is refreshed first; the form itself is the no-script path.
  document.querySelectorAll("form[data-logout]").forEach((form) => form.addEventListener("submit", async (e) => {
    e.preventDefault();
    await api("POST", "/console/logout");
    location.assign("/console/login");
  }));
}

// --- console -----------------------------------------------------------------------------------------------------

const REJECT_REASONS = ["cannot_deliver", "request_not_allowed", "unavailable", "other"];  // web/queue_routes.py

function consolePage() {
  const modelId = document.body.dataset.modelId;
  let queue = [];

  async function readQueue() {
    const r = await api("GET", "/queue");
    if (r.status !== 200) { setText("queue-error", errorText(r)); return; }
    setText("queue-error", "");
    queue = r.data.entries;
    drawQueue();
  }

  function drawQueue() {
    const rows = queue.map((e) => {
      const who = e.anonymous ? "anonymous" : (e.fan_display_name || "a fan");
      const label = `${e.item_name} for ${who}`;
      const act = async (action, body) => {
        const r = await api("POST", `/queue/${e.purchase_id}/${action}`, body);
        setText("queue-error", r.status === 200 ? "" : errorText(r));
        refresh("queue", "sales", "toy");
      };
      const reason = el("select", {"id": "reason-" + e.purchase_id, "aria-label": "Reason to reject " + label},
        ...REJECT_REASONS.map((v) => el("option", {value: v, text: v.replace(/_/g, " ")})));
      const button = (action, text, onClick) => el("button", {type: "button", "data-action": action,
                                                              "aria-label": `${text} ${label}`, on: {click: onClick}}, text);
      const actions = el("td", {class: "actions"},
        e.status === "queued" ? button("start", "Start", () => act("start")) : null,
        e.status === "in_progress" ? button("complete", "Complete", () => act("complete")) : null,
        reason,
        button("reject", "Reject", () => act("reject", {reason: reason.value})));
      return el("tr", {"data-purchase-id": e.purchase_id, "data-status": e.status, class: e.status},
        el("td", {text: e.status === "in_progress" ? "now" : String(e.position)}),
        el("td", {class: "fan", text: who}),
        el("td", {class: "item", text: e.item_name}),
        el("td", {class: "note", text: e.note || ""}),
        el("td", {text: e.token_value + " tk"}),
        el("td", {text: minutesSince(e.waiting_since)}),
        el("td", {text: timeOf(e.escrow_deadline)}),
        actions);
    });
    $("queue-rows").replaceChildren(...rows);
    $("queue-empty").hidden = queue.length > 0;
    setText("queue-total", queue.length ? `(${queue.length})` : "");
  }

  async function readShow() {
    const r = await api("GET", "/show");
    if (r.status !== 200) { setText("show-status", "Shows are not available: " + errorText(r)); return; }
    const s = r.data.show;  // the open show, else the last one (ended), else null
    const open = !!s && s.status !== "ended";
    setText("show-status", !s ? "offline (no show yet)" : s.status === "ended"
      ? `offline (last show ended ${timeOf(s.ended_at)})` : `${s.status} since ${timeOf(s.started_at)}`);
    setText("sales-show", s ? `${s.sales.count} sales, ${s.sales.tokens} tokens` + (open ? "" : " (last show)") : "no show");
    setText("queue-paused", r.data.queue_paused ? "The queue is paused: no new Queue ON purchases." : "The queue is open.");
    $("show-start").textContent = open && s.status === "paused" ? "Resume show" : "Go live";
    $("show-start").disabled = open && s.status === "live";
    $("show-pause").disabled = !open || s.status !== "live";
    $("show-end").disabled = !open;
    $("queue-pause").disabled = r.data.queue_paused;
    $("queue-resume").disabled = !r.data.queue_paused;
  }

  async function readSales() {
    const r = await api("GET", "/earnings?limit=1");  // this month up to today, by the server's local days
    if (r.status !== 200) { setText("sales-today", errorText(r)); return; }
    const day = r.data.by_day.find((d) => d.day === r.data.to) || {sales: 0, gross: 0, net: 0};
    setText("sales-today", `${day.sales} sales, ${day.gross} tokens (net ${day.net})`);
  }

  async function readToy() {
    const r = await api("GET", "/lovense/timeline");
    if (r.status !== 200) { setText("toy-now", errorText(r)); return; }
    const now = r.data.now_playing;
    const until = now && new Date(now.ends_at).toLocaleTimeString();
    setText("toy-now", now ? `Playing: ${now.item_name} until ${until}` : "Nothing playing.");
    $("toy-waiting").replaceChildren(...r.data.waiting.map((s) =>
      el("li", {text: `${s.item_name} at ${new Date(s.starts_at).toLocaleTimeString()} (${s.duration_seconds} s)`})));
  }

  async function readOverlay() {
    const r = await api("GET", "/overlay-link");
    if (r.status !== 200) return;
    setText("overlay-status", r.data.active ? `Active since ${timeOf(r.data.created_at)}.` : "No overlay URL.");
    if (!r.data.active) $("overlay-url").value = "";
    $("overlay-revoke").disabled = !r.data.active;
  }

  async function readMenus() {
    const r = await api("GET", `/menu/model/${modelId}`);
    if (r.status !== 200) { setText("menus-error", errorText(r)); return; }
    setText("menus-error", "");
    const menus = r.data;
    const change = async (method, path, body) => {
      const c = await api(method, path, body);
      setText("menus-error", c.status < 300 ? "" : errorText(c));
      refresh("menus");
    };
    // The ids in their new order after moving entry i by one place (-1 up, +1 down).
    const moved = (list, i, by) => {
      const ids = list.map((x) => x.id);
      [ids[i], ids[i + by]] = [ids[i + by], ids[i]];
      return ids;
    };
    const button = (text, label, onClick, disabled) =>
      el("button", {type: "button", "aria-label": label, disabled: !!disabled, on: {click: onClick}}, text);
    const reorderMenus = (i, by) => moved(menus, i, by).forEach((id, order) =>
      change("PATCH", `/menu/${id}`, {display_order: order}));

    $("menus").replaceChildren(...menus.map((m, mi) => {
      const items = [...m.items].sort((a, b) => a.display_order - b.display_order);
      const tags = ` queue ${m.queue_mode}${m.live_only ? ", live only" : ""}${m.is_active ? "" : ", off"}`;
      return el("article", {class: "menu" + (m.is_active ? "" : " off"), "data-menu-id": m.id},
        el("h3", {}, m.name, el("span", {class: "tag", text: tags})),
        el("div", {class: "buttons"},
          button(m.is_active ? "Switch off" : "Switch on", (m.is_active ? "Switch off menu " : "Switch on menu ") + m.name,
                 () => change("POST", `/menu/${m.id}/${m.is_active ? "deactivate" : "activate"}`)),
          button("Up", `Move menu ${m.name} up`, () => reorderMenus(mi, -1), mi === 0),
          button("Down", `Move menu ${m.name} down`, () => reorderMenus(mi, 1), mi === menus.length - 1)),
        el("ul", {}, ...items.map((it, i) => el("li", {class: it.is_active ? "" : "off"},
          el("span", {text: `${it.name} - ${it.token_value} tk${it.is_active ? "" : " (off)"}`}), " ",
          button(it.is_active ? "Off" : "On", (it.is_active ? "Switch off " : "Switch on ") + it.name,
                 () => change("POST", `/menu/${m.id}/items/${it.id}/${it.is_active ? "deactivate" : "activate"}`)),
          button("Up", `Move ${it.name} up`,
                 () => change("PUT", `/menu/${m.id}/items/order`, {item_ids: moved(items, i, -1)}), i === 0),
          button("Down", `Move ${it.name} down`,
                 () => change("PUT", `/menu/${m.id}/items/order`, {item_ids: moved(items, i, 1)}),
                 i === items.length - 1)))));
    }));
  }

  const refresh = batcher({queue: readQueue, show: readShow, sales: readSales, toy: readToy, menus: readMenus,
                           overlay: readOverlay});
  const all = () => refresh("queue", "show", "sales", "toy", "menus", "overlay");
  const showAction = async (path, body) => {
    const r = await api("POST", path, body);
    setText("show-error", r.status === 200 ? "" : errorText(r));
    refresh("show", "queue", "sales", "menus");
  };
  $("show-start").addEventListener("click", () => showAction("/show/start"));
  $("show-pause").addEventListener("click", () => showAction("/show/pause"));
  $("show-end").addEventListener("click", () => showAction("/show/end", {open_entries: $("show-end-mode").value}));
  $("queue-pause").addEventListener("click", () => showAction("/queue/pause"));
  $("queue-resume").addEventListener("click", () => showAction("/queue/resume"));
  $("overlay-rotate").addEventListener("click", async () => {
    const r = await api("POST", "/overlay-link");
    if (r.status === 201) $("overlay-url").value = r.data.url;
    refresh("overlay");
  });
  $("overlay-revoke").addEventListener("click", async () => { await api("DELETE", "/overlay-link"); refresh("overlay"); });
  setInterval(drawQueue, 30000);  // waiting times age; nothing is fetched

  const onEvent = (type) => {
    if (type.startsWith("purchase.") || type.startsWith("queue.")) refresh("queue", "sales", "show");
    else if (type.startsWith("toy.")) refresh("toy");
    else if (type === "menu.changed") refresh("menus");
    else if (type === "show.changed") refresh("show", "menus");
  };
  all();
  live(() => api("POST", "/events/ticket"), onEvent, all);
}

// --- fan page ----------------------------------------------------------------------------------------------------

function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function fanPage() {
  const modelId = document.body.dataset.modelId;
  if (!modelId) return;
  const places = {};  // purchase id -> queue position, from the stream's queue.position messages

  async function readMenus() {
    const r = await api("GET", `/menu/model/${modelId}`);
    if (r.status !== 200) { setText("buy-error", errorText(r)); return; }
    $("menus").replaceChildren(...r.data.map((m) => el("article", {class: "menu"},
      el("h3", {text: m.name}),
      el("ul", {}, ...m.items.map((it) => el("li", {},
        el("span", {text: `${it.name} - ${it.token_value} tokens${m.queue_mode === "ON" ? " (queued)" : ""}`}), " ",
        el("button", {type: "button", "aria-label": `Buy ${it.name} for ${it.token_value} tokens`,
                      on: {click: (ev) => buy(ev.currentTarget, m, it)}}, "Buy")))))));
  }

  async function buy(button, menu, item) {
    button.disabled = true;
    const body = {menu_id: menu.id, menu_item_id: item.id, idempotency_key: newKey(),
                  anonymous: $("anonymous").checked};
    const note = $("note").value.trim();
    if (note) body.note = note;
    const r = await api("POST", "/menu/purchase", body);
    button.disabled = false;
    setText("buy-error", r.status < 300 ? "" : errorText(r));
    if (r.status < 300) $("note").value = "";
    refresh("purchases", "wallet");
  }

  async function readPurchases() {
    const r = await api("GET", "/menu/purchase/history?limit=10");
    if (r.status !== 200) return;
    const mine = r.data.purchases;
    $("purchases").replaceChildren(...mine.map((p) => {
      const id = p.purchase_id;
      let status = p.status;
      if (p.status === "queued") status = `queued, position ${places[id] || p.queue_position || "?"}`;
      if (p.status === "in_progress") status = "being performed now";
      if (p.status === "refunded") status = `refunded (${(p.refund_reason || "").replace(/_/g, " ")})`;
      if (p.status === "failed") status = `refused (${(p.failure_reason || "").replace(/_/g, " ")})`;
      return el("li", {"data-purchase-id": id, "data-status": p.status},
        el("span", {class: "item", text: p.item_name}), ": ", el("span", {class: "status", text: status}));
    }));
  }

  async function readWallet() {
    const r = await api("GET", "/wallet");
    if (r.status === 200) setText("balance", String(r.data.token_balance));
  }

  const refresh = batcher({menus: readMenus, purchases: readPurchases, wallet: readWallet});
  const onEvent = (type, message) => {
    if (type === "queue.position") places[message.purchase_id] = message.data.queue_position;
    if (type === "menu.changed" || type === "show.changed") refresh("menus");
    else refresh("purchases", "wallet");
  };
  const all = () => refresh("menus", "purchases", "wallet");
  all();
  live(() => api("POST", "/events/ticket"), onEvent, all);
}

// --- overlay -----------------------------------------------------------------------------------------------------

function overlayPage() {
  const key = document.body.dataset.overlayKey;
  const who = (e) => e.fan_display_name ? `${e.item_name} - ${e.fan_display_name}` : e.item_name;

  async function readState() {
    const r = await api("GET", "/overlay/state", undefined, {"X-Overlay-Key": key});
    if (r.status !== 200) { document.body.replaceChildren(); return; }  // revoked: show nothing
    const s = r.data;
    $("menus").replaceChildren(...s.menus.map((m) => el("section", {class: "menu"},
      el("h2", {text: m.name}),
      el("ul", {}, ...m.items.map((it) => el("li", {},
        el("span", {text: it.name}), el("span", {class: "price", text: `${it.token_value} tk`})))))));
    $("now-performing").hidden = !s.now_performing;
    setText("now-item", s.now_performing ? who(s.now_performing) : "");
    $("next-box").hidden = s.next.length === 0;
    $("next").replaceChildren(...s.next.map((e) => el("li", {text: who(e)})));
    $("toy").hidden = !s.toy;
    setText("toy", s.toy ? `Toy: ${s.toy.item_name}` : "");
  }

  const refresh = batcher({state: readState});
  readState();
  live(() => api("POST", "/overlay/ticket", {key}, {"X-Overlay-Key": key}), () => refresh("state"), () => refresh("state"));
}

document.addEventListener("DOMContentLoaded", () => {
  wireLogout();
  const page = document.body.dataset.page;
  if (page === "console") consolePage();
  else if (page === "fan") fanPage();
  else if (page === "overlay") overlayPage();
});
