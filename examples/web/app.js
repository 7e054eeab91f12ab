// The broker's web client: one WebSocket to /ws speaking pubsub.v1 (see docs/PROTOCOL.md).
// Plain JavaScript, no build step; served by the broker itself.

/** Newest messages kept on the board; older ones are dropped. */
const BOARD_LIMIT = 200;
/** Reconnect back-off: first delay, doubled per failed attempt up to the maximum, ±25 % jitter. */
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** Close codes the broker uses, in words, for when a close frame carries no reason. */
const CLOSE_WORDS = {
  1000: "closed",
  1001: "server shutting down",
  1006: "connection lost",
  1009: "message too big",
  1011: "server error",
  4001: "subscription invalidated",
  4008: "slow consumer",
};
const CLOSE_INVALIDATED = 4001;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  keyForm: $("key-form"),
  key: $("api-key"),
  channelForm: $("channel-form"),
  channel: $("channel"),
  channelState: $("channel-state"),
  messageForm: $("message-form"),
  message: $("message"),
  notice: $("notice"),
  board: $("board"),
  boardEmpty: $("board-empty"),
  clear: $("clear"),
};

const state = {
  key: "",
  ws: null,
  /** The channel this page is on: Send publishes here, messages come from here. */
  channel: "",
  /** "none" | "pending" | "subscribed" | "refused" | "ended" */
  subscription: "none",
  attempt: 0,
  retryTimer: null,
  seq: 0,
  /** Requests awaiting their reply, by id; cleared with each new connection. */
  pending: new Map(),
};

function setStatus(kind, text) {
  ui.status.dataset.state = kind;
  ui.status.textContent = text;
}

function notify(text, kind = "error") {
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
  ui.notice.hidden = false;
}

function clearNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
}

function showChannelState() {
  const c = state.channel;
  const text = {
    none: "Not subscribed to any channel.",
    pending: isOpen() ? `Subscribing to ${c}…` : `Will subscribe to ${c} once connected.`,
    subscribed: `Subscribed to ${c}.`,
    refused: `Not subscribed: ${c} was refused.`,
    ended: `Not subscribed: an administrator closed ${c}.`,
  }[c ? state.subscription : "none"];
  ui.channelState.textContent = text;
}

/** Keeps the key and channel in the address bar so that a reload or a copied URL reopens
 * the same view. */
function rememberInUrl() {
  const params = new URLSearchParams(location.search);
  for (const [name, value] of [["api_key", state.key], ["channel", state.channel]]) {
    if (value) params.set(name, value);
    else params.delete(name);
  }
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

function isOpen() {
  return state.ws !== null && state.ws.readyState === WebSocket.OPEN;
}

function wsUrl(key) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws?api_key=${encodeURIComponent(key)}`;
}

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  if (state.ws) {
    const old = state.ws;
    state.ws = null;
    old.onclose = null;
    old.close(1000);
  }
  state.pending.clear();
  if (state.channel) state.subscription = "pending";
  showChannelState();
  if (!state.key) {
    setStatus("idle", "enter an API key to connect");
    ui.key.focus();
    return;
  }
  setStatus("connecting", "connecting…");
  let ws;
  try {
    ws = new WebSocket(wsUrl(state.key), "pubsub.v1");
  } catch (e) {
    setStatus("stopped", `cannot connect: ${e.message}`);
    return;
  }
  state.ws = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    state.attempt = 0;
    setStatus("connected", "connected");
    if (state.channel) subscribe(state.channel);
  };
  ws.onmessage = (ev) => onFrame(ev.data);
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    state.ws = null;
    onClose(ev, opened);
  };
}

function onClose(ev, opened) {
  if (state.subscription === "subscribed" || state.subscription === "pending") {
    state.subscription = state.channel ? "pending" : "none";
  }
  if (ev.code === CLOSE_INVALIDATED) {
    // An administrator ended the subscription: reconnecting would undo their decision.
    state.subscription = "ended";
    showChannelState();
    setStatus("stopped", `closed by administrator (${ev.reason || CLOSE_WORDS[ev.code]})`);
    notify(
      `An administrator closed the subscription to ${state.channel}. Press Connect to connect again.`,
      "info",
    );
    return;
  }
  showChannelState();
  let reason = ev.reason || CLOSE_WORDS[ev.code] || `close code ${ev.code}`;
  if (!opened && ev.code === 1006) reason = "broker unreachable or API key refused";
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  state.attempt += 1;
  const seconds = Math.max(1, Math.round(delay / 1000));
  setStatus("waiting", `closed: ${reason} — reconnecting in ${seconds} s`);
  state.retryTimer = setTimeout(connect, delay);
}

/** Sends a request with a fresh id; false when there is no open connection. */
function request(frame, context) {
  if (!isOpen()) return false;
  const id = String(++state.seq);
  state.pending.set(id, { ...context, op: frame.type });
  state.ws.send(JSON.stringify({ ...frame, id }));
  return true;
}

function subscribe(channel) {
  state.subscription = "pending";
  showChannelState();
  request({ type: "subscribe", channel }, { channel });
}

function pickChannel(raw) {
  const channel = raw.trim();
  const asked = state.subscription === "subscribed" || state.subscription === "pending";
  if (!channel || (channel === state.channel && asked)) return;
  if (state.channel && state.channel !== channel && asked) {
    request({ type: "unsubscribe", channel: state.channel }, { channel: state.channel });
  }
  state.channel = channel;
  ui.channel.value = channel;
  clearNotice();
  rememberInUrl();
  if (isOpen()) subscribe(channel);
  else {
    state.subscription = "pending";
    showChannelState();
  }
}

function onFrame(text) {
  let f;
  try {
    f = JSON.parse(text);
  } catch {
    notify("The broker sent a frame that is not JSON.");
    return;
  }
  const sent = f.id !== undefined ? state.pending.get(f.id) : undefined;
  if (f.id !== undefined) state.pending.delete(f.id);
  switch (f.type) {
    case "message":
      addToBoard(f);
      break;
    case "subscribed":
      if (f.channel === state.channel) {
        state.subscription = "subscribed";
        showChannelState();
      }
      break;
    case "invalidated":
      if (f.channel === state.channel) {
        state.subscription = "ended";
        showChannelState();
      }
      notify(`An administrator closed the subscription to ${f.channel}.`, "info");
      break;
    case "error":
      onError(f, sent);
      break;
    default:
      // published, unsubscribed, pong: nothing to show.
      break;
  }
}

function onError(f, sent) {
  const why = `${f.message} (${f.code})`;
  if (sent?.op === "subscribe") {
    if (sent.channel === state.channel) {
      state.subscription = "refused";
      showChannelState();
    }
    notify(`Cannot subscribe to ${sent.channel}: ${why}`);
  } else if (sent?.op === "publish") {
    notify(`Message to ${sent.channel} not sent: ${why}`);
    if (!ui.message.value) ui.message.value = sent.text;
  } else {
    notify(`The broker answered: ${why}`);
  }
}

function addToBoard(m) {
  const text =
    m.data !== null && typeof m.data === "object" && typeof m.data.text === "string"
      ? m.data.text
      : JSON.stringify(m.data);
  const now = new Date();
  const li = document.createElement("li");
  li.dataset.channel = m.channel;
  li.dataset.origin = m.origin;
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = m.channel;
  tag.title = `channel ${m.channel}`;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("span");
  meta.className = "meta";
  const time = document.createElement("time");
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString();
  meta.append(`from region ${m.origin} · `, time);
  li.append(tag, body, meta);
  ui.board.prepend(li);
  while (ui.board.children.length > BOARD_LIMIT) ui.board.lastElementChild.remove();
  ui.boardEmpty.hidden = true;
}

ui.keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = ui.key.value.trim();
  state.attempt = 0;
  clearNotice();
  rememberInUrl();
  connect();
});

ui.channelForm.addEventListener("submit", (e) => {
  e.preventDefault();
  pickChannel(ui.channel.value);
  if (state.channel) ui.message.focus();
});
ui.channel.addEventListener("change", () => pickChannel(ui.channel.value));
ui.channel.addEventListener("input", (e) => {
  // A pick from the drop-down is not typing: it arrives as a plain Event or as a replacement.
  if (!(e instanceof InputEvent) || e.inputType === "insertReplacementText") {
    pickChannel(ui.channel.value);
  }
});

ui.messageForm.addEventListener("submit", (e) => {
  e.preventDefault();
  if (ui.channel.value.trim() !== state.channel) pickChannel(ui.channel.value);
  const text = ui.message.value;
  if (!state.channel) {
    notify("Pick a channel first.");
    ui.channel.focus();
    return;
  }
  if (!text.trim()) {
    ui.message.focus();
    return;
  }
  const channel = state.channel;
  if (request({ type: "publish", channel, data: { text } }, { channel, text })) {
    ui.message.value = "";
  } else {
    notify("Not connected: the message was not sent.");
  }
  ui.message.focus();
});

ui.clear.addEventListener("click", () => {
  ui.board.replaceChildren();
  ui.boardEmpty.hidden = false;
});

window.addEventListener("online", () => {
  if (state.retryTimer !== null) connect();
});

const params = new URLSearchParams(location.search);
state.key = (params.get("api_key") ?? "").trim();
state.channel = (params.get("channel") ?? "").trim();
ui.key.value = state.key;
ui.channel.value = state.channel;
connect();
if (state.key) (state.channel ? ui.message : ui.channel).focus();
