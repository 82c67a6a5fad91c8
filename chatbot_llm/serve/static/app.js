// The chat page: streams replies from /v1/chat/completions, lists and reopens /api/conversations.
// Plain JS, no libraries, nothing from a CDN: it works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const PARAMS = ["max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size", "seed"];
let conversation = newId();
let messages = [];  // this conversation's turns, sent whole: the server's template renders them
let controller = null;

function newId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showMessage(role, text, meta) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(body);
  if (meta) {
    const small = document.createElement("span");
    small.className = "meta";
    small.textContent = meta;
    div.append(small);
  }
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function requestParams() {
  const body = {};
  for (const name of PARAMS) {
    const value = $(name).value.trim();
    if (value !== "") body[name] = Number(value);
  }
  if ($("do_sample").value) body.do_sample = $("do_sample").value === "true";
  return body;
}

async function loadModels() {
  const { data } = await (await api("/v1/models")).json();
  $("model").replaceChildren(...data.map((m) => new Option(m.id, m.id)));
}

async function loadHistory() {
  const { data } = await (await api("/api/conversations")).json();
  $("history").replaceChildren(...data.map((c) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = c.title || "(empty)";
    button.title = `${c.model}, ${c.turns} turn(s), ${new Date(c.time * 1000).toLocaleString()}`;
    button.dataset.conversation = c.id;
    if (c.id === conversation) button.classList.add("current");
    button.addEventListener("click", () => openConversation(c.id));
    item.append(button);
    return item;
  }));
}

async function openConversation(id) {
  const { exchanges } = await (await api(`/api/conversations/${encodeURIComponent(id)}`)).json();
  conversation = id;
  messages = [];
  $("messages").replaceChildren();
  for (const e of exchanges) {
    messages.push({ role: "user", content: e.prompt }, { role: "assistant", content: e.response });
    showMessage("user", e.prompt);
    showMessage("assistant", e.response, `${e.model}, ${e.completion_tokens} tokens, ${e.finish_reason}`);
  }
  if (exchanges.length) $("model").value = exchanges[exchanges.length - 1].model;
  loadHistory();
}

async function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || controller) return;
  $("error").textContent = "";
  $("prompt").value = "";
  showMessage("user", prompt);
  const reply = showMessage("assistant", "");
  const text = reply.querySelector(".text");
  const turn = [...messages, { role: "user", content: prompt }];
  controller = new AbortController();
  $("send").hidden = true;
  $("stop").hidden = false;
  let finish = null;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: $("model").value, messages: turn, stream: true, conversation_id: conversation,
                             ...requestParams() }),
      signal: controller.signal,
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          if (choice.delta && choice.delta.content) text.textContent += choice.delta.content;
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    }
    messages = [...turn, { role: "assistant", content: text.textContent }];
    reply.dataset.finishReason = finish;
  } catch (error) {
    if (error.name !== "AbortError") $("error").textContent = error.message;
  } finally {
    controller = null;
    $("send").hidden = false;
    $("stop").hidden = true;
    loadHistory().catch(() => {});
  }
}

$("ask").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) send(event);
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", () => {
  conversation = newId();
  messages = [];
  $("messages").replaceChildren();
  loadHistory();
});
loadModels().then(loadHistory).catch((error) => { $("error").textContent = error.message; });
