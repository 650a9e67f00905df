// The relabel review page: one flagged image at a time, decided with the keyboard.
// Every decision is POSTed to /api/decide, which writes it to the decision log before answering;
// the page changes its own state only from the server's answer, so what it shows is what is saved.
"use strict";
(function () {
  const token = new URLSearchParams(window.location.search).get("token") || "";
  const withToken = (path) => path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  const $ = (id) => document.getElementById(id);

  const state = { classes: [], items: [], history: [], index: 0, flagged: 0 };
  // Actions run one after another, so fast typing keeps its order and nothing is sent twice at once.
  let chain = Promise.resolve();

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  function decidedCount() {
    return state.items.filter((it) => it.decision).length;
  }

  function describe(decision) {
    if (!decision) return "undecided";
    if (decision.decision === "relabel") return "relabel → " + decision.label;
    if (decision.decision === "keep") return "keep the given label";
    return "remove from the dataset";
  }

  function render() {
    const total = state.items.length;
    const decided = decidedCount();
    $("progress").textContent = decided + " / " + total + " decided";
    $("budget").textContent = state.flagged > total
      ? "review budget " + total + " of " + state.flagged + " flagged (the rest stay flagged; flag --budget N shows more)"
      : "";
    document.body.dataset.decided = String(decided);
    if (total === 0) {
      $("position").textContent = "nothing is flagged";
      $("face").removeAttribute("src");
      document.body.dataset.imageId = "";
      return;
    }
    const item = state.items[state.index];
    $("position").textContent = "image " + (state.index + 1) + " of " + total + " · rank " + item.rank +
      (decided === total ? " · all decided" : "");
    document.body.dataset.index = String(state.index);
    document.body.dataset.imageId = item.image_id;
    $("face").src = withToken("/img/" + encodeURIComponent(item.image_id) + ".png");
    $("face").alt = item.path;
    $("caption").textContent = item.path + " (" + item.split + ")";
    $("given").textContent = item.given;
    $("suggested").textContent = item.suggested || "–";
    renderTop3(item);
    renderEstimate(item);
    renderVotes(item);
    const dec = $("decision");
    dec.textContent = describe(item.decision);
    dec.dataset.decision = item.decision ? item.decision.decision : "";

    const list = $("classes");
    list.replaceChildren();
    state.classes.forEach((cls, i) => {
      const p = item.probs[cls] || 0;
      const li = document.createElement("li");
      li.dataset.key = String(i + 1);
      if (cls === item.given) li.classList.add("given");
      if (cls === item.suggested) li.classList.add("suggested");
      const chosen = item.decision && (item.decision.decision === "relabel" ? item.decision.label === cls
        : item.decision.decision === "keep" && cls === item.given);
      if (chosen) li.classList.add("chosen");
      const key = document.createElement("kbd");
      key.textContent = String(i + 1);
      li.append(key, ...barCells(cls, p, p.toFixed(2)));
      list.appendChild(li);
    });
    // warm the cache for the next image so moving on is instant
    if (state.index + 1 < total) {
      new Image().src = withToken("/img/" + encodeURIComponent(state.items[state.index + 1].image_id) + ".png");
    }
  }

  // a class name, a bar filled to `share` (0-1) and the value shown beside it
  function barCells(cls, share, text) {
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = cls;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * share).toFixed(1) + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "p";
    value.textContent = text;
    return [name, bar, value];
  }

  // the three most probable classes, with their (out-of-fold) probabilities
  function renderTop3(item) {
    const top = $("top3");
    top.replaceChildren(document.createTextNode("most probable: "));
    (item.top3 || []).forEach(([cls, p], i) => {
      if (i > 0) top.appendChild(document.createTextNode(" · "));
      const b = document.createElement("b");
      b.textContent = cls;
      top.append(b, document.createTextNode(" " + p.toFixed(2)));
    });
  }

  function renderEstimate(item) {
    const parts = [];
    if (item.p_wrong !== null && item.p_wrong !== undefined) {
      parts.push("given label wrong with probability " + item.p_wrong.toFixed(2));
    }
    if (item.expected_precision !== null && item.expected_precision !== undefined) {
      parts.push("expected precision of the queue down to rank " + item.rank + ": " + item.expected_precision.toFixed(2));
    }
    $("estimate").textContent = parts.join(" · ");
  }

  // annotator votes as a histogram, when the dataset carries them (votes_<class>, vote_n)
  function renderVotes(item) {
    const box = $("votes");
    const votes = item.votes;
    box.hidden = !votes;
    const bars = $("vote-bars");
    bars.replaceChildren();
    if (!votes) return;
    $("votes-title").textContent = "annotator votes (" + votes.n + ")";
    const n = Math.max(1, votes.n);
    Object.entries(votes.counts).forEach(([cls, count]) => {
      const li = document.createElement("li");
      li.dataset.cls = cls;
      li.append(...barCells(cls, count / n, String(count)));
      bars.appendChild(li);
    });
  }

  async function load() {
    const response = await fetch(withToken("/api/queue"), { cache: "no-store" });
    if (!response.ok) {
      setStatus("could not load the queue (" + response.status + "); open the URL fercurate printed", true);
      return;
    }
    const data = await response.json();
    state.classes = data.classes;
    state.items = data.items;
    state.history = data.history;
    state.flagged = data.flagged || data.items.length;
    const firstOpen = state.items.findIndex((it) => !it.decision);
    state.index = firstOpen >= 0 ? firstOpen : Math.max(0, state.items.length - 1);
    $("title").textContent = "fercurate relabel review · " + data.flag_version;
    $("maxkey").textContent = String(Math.min(9, state.classes.length));
    render();
    document.body.dataset.ready = "1";
  }

  async function send(item, decision, label) {
    const response = await fetch(withToken("/api/decide"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_id: item.image_id, decision: decision, label: label || null }),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || "HTTP " + response.status);
    item.decision = data.decision;
    return data;
  }

  async function decide(decision, label) {
    const item = state.items[state.index];
    if (!item) return;
    try {
      await send(item, decision, label);
    } catch (err) {
      setStatus("NOT saved: " + err.message, true);
      return;
    }
    state.history.push(item.image_id);
    setStatus("saved: " + describe(item.decision), false);
    if (state.index + 1 < state.items.length) state.index += 1;
    render();
  }

  // u: undo the decision on the image shown, or else the most recent decision (and go back to it)
  async function undo() {
    let item = state.items[state.index];
    if (!item) return;
    if (!item.decision) {
      const last = state.history[state.history.length - 1];
      if (last === undefined) {
        setStatus("nothing to undo", false);
        return;
      }
      state.index = state.items.findIndex((it) => it.image_id === last);
      item = state.items[state.index];
    }
    try {
      await send(item, "undo");
    } catch (err) {
      setStatus("undo NOT saved: " + err.message, true);
      render();
      return;
    }
    const at = state.history.lastIndexOf(item.image_id);
    if (at >= 0) state.history.splice(at, 1);
    setStatus("undone: now " + describe(item.decision), false);
    render();
  }

  function move(step) {
    const next = state.index + step;
    if (next >= 0 && next < state.items.length) {
      state.index = next;
      render();
    }
  }

  function handle(key) {
    if (key === "ArrowRight") return move(1);
    if (key === "ArrowLeft") return move(-1);
    if (key === "k" || key === "K") return decide("keep");
    if (key === "x" || key === "X") return decide("remove");
    if (key === "u" || key === "U") return undo();
    if (/^[1-9]$/.test(key)) {
      const cls = state.classes[Number(key) - 1];
      if (cls !== undefined) return decide("relabel", cls);
    }
    return undefined;
  }

  function enqueue(key) {
    chain = chain.then(() => handle(key)).catch((err) => setStatus(String(err), true));
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const known = /^([1-9]|[kKxXuU]|ArrowLeft|ArrowRight)$/.test(event.key);
    if (!known) return;
    event.preventDefault();
    enqueue(event.key);
  });
  document.addEventListener("click", (event) => {
    const target = event.target.closest("[data-key]");
    if (target) enqueue(target.dataset.key);
  });

  chain = chain.then(load).catch((err) => setStatus("could not load the queue: " + err, true));
})();
