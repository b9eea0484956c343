// mner-serve's page: a post (and a picture) to POST /v1/tag, its answer drawn as the post's text with each entity
// highlighted. Every piece of the post or the answer enters the page as text (textContent, text nodes), never as
// HTML: the server's Content-Security-Policy (require-trusted-types-for 'script') makes the browser refuse
// innerHTML and its kin outright.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TYPE_NAMES = { PER: "person", LOC: "location", ORG: "organisation", MISC: "other", OTHER: "other" };
  const PALETTE = 8; // colour classes t0..t7 in style.css
  const TEXT_ONLY = "This bundle has no picture stages: it tags text only.";
  // Where an API error belongs: by the limit it names, else by its kind; anything else is the form's.
  const FIELD_OF_LIMIT = { max_text_chars: "text", max_post_pieces: "text", max_pixels: "image", max_request_pixels: "image" };
  const FIELD_OF_KIND = {
    "empty text": "text", "text too long": "text", "bad text": "text",
    "bad image": "image", "image too large": "image", "invalid base64": "image",
  };

  const form = $("post-form");
  const textBox = $("text");
  const imageInput = $("image");
  const inputs = { text: textBox, image: imageInput };
  const state = { info: null, typeClasses: new Map(), previewUrl: null, answerUrl: null, busy: false };

  // An element with properties (className, textContent, ...) and children (nodes, or strings as text nodes).
  function el(tag, props = {}, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  function typeClass(type) {
    if (!state.typeClasses.has(type)) state.typeClasses.set(type, `t${state.typeClasses.size % PALETTE}`);
    return state.typeClasses.get(type);
  }

  // ------------------------------------------------------------------ the model's facts and the legend

  async function loadInfo() {
    let info;
    try {
      const response = await fetch("/v1/info");
      info = await response.json();
      if (!response.ok) throw new Error(info.error ? info.error.message : response.statusText);
    } catch (error) {
      $("facts-status").textContent = `unknown (/v1/info: ${error.message})`;
      return;
    }
    state.info = info;
    info.entity_types.forEach(typeClass); // colours follow the bundle's (sorted) type list
    const facts = [
      ["Bundle", info.bundle ?? "?"],
      ["Backend", info.backend ? `${info.backend} on ${info.device}` : "?"],
      ["Precision", info.precision ?? "?"],
      ["Stages", info.stages.length ? info.stages.join(" + ") : "?"],
      ["Created", info.created ? info.created.slice(0, 10) : "?"],
      ["sha256", info.sha256 ? info.sha256.slice(0, 12) : "?"],
    ];
    $("facts").replaceChildren(...facts.map(([name, value]) => el("div", { className: "fact" },
      el("dt", { textContent: name }), el("dd", { textContent: value }))));
    const randomStages = info.random_stages ?? [];
    if (!info.random_weights && randomStages.length) { // a trained tagger, picture stages without their weights
      $("random-warning").textContent = `The ${randomStages.join(" and ")} stage${randomStages.length > 1 ? "s have" : " has"} `
        + "random weights (exported without a weights file): the objects found mean nothing.";
    }
    $("random-warning").hidden = !info.random_weights && !randomStages.length;
    $("char-limit").textContent = ` of at most ${info.max_text_chars}`;
    if (!info.pictures) { // the API refuses a picture for such a bundle: say so before one is chosen
      imageInput.disabled = true;
      $("image-hint").textContent = TEXT_ONLY;
    }
    drawLegend(info.entity_types);
  }

  function drawLegend(types) {
    $("legend").replaceChildren(...types.map((type) => el("li", {},
      el("span", { className: `swatch ${typeClass(type)}`, textContent: type }),
      TYPE_NAMES[type] ?? "")));
  }

  // ------------------------------------------------------------------ the picture: chosen, dropped or pasted

  function picture() {
    return imageInput.files.length ? imageInput.files[0] : null;
  }

  function setPicture(file) {
    if (imageInput.disabled) {
      $("image-error").textContent = TEXT_ONLY;
      return;
    }
    // The file input holds the picture whichever way it came, so there is one place to read it from.
    const files = new DataTransfer();
    if (file) files.items.add(file);
    imageInput.files = files.files;
    showPicture();
  }

  function showPicture() {
    const file = picture();
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = file ? URL.createObjectURL(file) : null;
    $("preview").hidden = !file;
    $("clear-image").hidden = !file;
    if (file) {
      $("preview-img").src = state.previewUrl;
      $("preview-name").textContent = `${file.name || "pasted picture"} (${Math.ceil(file.size / 1024)} KiB)`;
    } else {
      $("preview-img").removeAttribute("src");
    }
    clearError("image");
  }

  function firstFile(transfer) {
    if (!transfer) return null;
    for (const item of transfer.items || []) {
      if (item.kind === "file") return item.getAsFile();
    }
    return transfer.files && transfer.files.length ? transfer.files[0] : null;
  }

  function hasFiles(event) {
    return event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  }

  // ------------------------------------------------------------------ errors, next to what they concern

  function clearError(field) {
    $(`${field}-error`).replaceChildren();
    if (inputs[field]) inputs[field].removeAttribute("aria-invalid");
  }

  function clearErrors() {
    ["text", "image", "form"].forEach(clearError);
  }

  function showError(field, message, kind, status) {
    const where = $(`${field}-error`);
    const parts = [];
    if (kind) parts.push(el("span", { className: "error-kind", textContent: `${kind}${status ? ` (${status})` : ""}: ` }));
    parts.push(el("span", { className: "error-message", textContent: message }));
    where.replaceChildren(...parts);
    if (inputs[field]) {
      inputs[field].setAttribute("aria-invalid", "true");
      inputs[field].focus();
    }
  }

  function fieldOf(error, withPicture) {
    if (error.limit in FIELD_OF_LIMIT) return FIELD_OF_LIMIT[error.limit];
    if (error.limit === "max_body_bytes") return withPicture ? "image" : "text";
    return FIELD_OF_KIND[error.kind] ?? "form";
  }

  // ------------------------------------------------------------------ tagging

  async function tag(event) {
    event.preventDefault();
    if (state.busy) return;
    clearErrors();
    const text = textBox.value;
    const file = picture();
    let init;
    if (file) {
      // The text as a Blob, not a string: FormData rewrites a string's line breaks to CRLF, which would move
      // every offset the answer gives after the first line break.
      const body = new FormData();
      body.append("text", new Blob([text], { type: "text/plain; charset=utf-8" }));
      body.append("image", file);
      init = { method: "POST", body };
    } else {
      init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text }) };
    }
    setBusy(true);
    const started = performance.now();
    let response;
    let answer;
    try {
      response = await fetch("/v1/tag", init);
      answer = await response.json();
    } catch (error) {
      setBusy(false);
      $("status").textContent = "Not tagged.";
      showError("form", response ? `HTTP ${response.status}: the answer is not JSON` : `the request failed: ${error.message}`);
      return;
    }
    const milliseconds = performance.now() - started;
    setBusy(false);
    if (!response.ok) {
      const error = answer.error ?? { kind: "error", message: JSON.stringify(answer) };
      $("status").textContent = `Not tagged: ${error.kind} (HTTP ${response.status}).`;
      showError(fieldOf(error, Boolean(file)), error.message, error.kind, response.status);
      return;
    }
    drawAnswer(text, file, answer, milliseconds);
  }

  function setBusy(busy) {
    state.busy = busy;
    $("tag").disabled = busy;
    $("answer").setAttribute("aria-busy", String(busy));
    if (busy) $("status").textContent = "Tagging…";
  }

  function drawAnswer(text, file, answer, milliseconds) {
    // The API's offsets count code points (Python's str); a JS string counts UTF-16 units, so slice code points.
    const chars = Array.from(text);
    const pieces = [];
    let at = 0;
    for (const entity of [...answer.entities].sort((a, b) => a.start - b.start)) {
      if (entity.start > at) pieces.push(chars.slice(at, entity.start).join(""));
      pieces.push(entityMark(entity, chars.slice(entity.start, entity.end).join("")));
      at = Math.max(at, entity.end);
    }
    pieces.push(chars.slice(at).join(""));
    $("tagged").replaceChildren(...pieces);
    const types = new Set(answer.entities.map((entity) => entity.type));
    if ([...types].some((type) => !state.typeClasses.has(type))) {
      drawLegend([...new Set([...(state.info ? state.info.entity_types : []), ...types])]);
    }

    const count = answer.entities.length;
    $("status").replaceChildren(
      `${count} ${count === 1 ? "entity" : "entities"}${count ? " (hover or focus one for its score)" : ""}; answered in `,
      el("span", { id: "timing", textContent: `${Math.round(milliseconds)} ms` }), ".");
    $("result").scrollIntoView({ block: "nearest" }); // at phone width the answer is below the form

    if (state.answerUrl) URL.revokeObjectURL(state.answerUrl);
    state.answerUrl = file ? URL.createObjectURL(file) : null;
    $("picture-answer").hidden = !file;
    if (!file) return;
    $("thumb").src = state.answerUrl;
    const objects = answer.objects.map((name) => el("li", { textContent: name }));
    $("objects").replaceChildren(...objects);
    let note = answer.objects.length ? "" : "None found.";
    if (answer.image_error) note = `The picture was not used: ${answer.image_error}`; // mner-serve --on-bad-image text-only
    $("picture-note").textContent = note;
  }

  function entityMark(entity, text) {
    const score = Number(entity.score).toFixed(2);
    const mark = el("mark", { className: `entity ${typeClass(entity.type)}`, tabIndex: 0 },
      el("span", { className: "entity-text", textContent: text }),
      el("span", { className: "entity-type", textContent: entity.type }),
      el("span", { className: "entity-score", textContent: ` score ${score}` }));
    Object.assign(mark.dataset, { type: entity.type, start: entity.start, end: entity.end, score: entity.score });
    return mark;
  }

  // ------------------------------------------------------------------ wiring

  form.addEventListener("submit", tag);
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  textBox.addEventListener("input", () => {
    $("char-count").textContent = Array.from(textBox.value).length;
    clearError("text");
  });
  for (const button of document.querySelectorAll("button.example")) {
    button.addEventListener("click", () => {
      textBox.value = button.textContent;
      textBox.dispatchEvent(new Event("input"));
      textBox.focus();
    });
  }
  imageInput.addEventListener("change", showPicture);
  $("clear-image").addEventListener("click", () => {
    setPicture(null);
    imageInput.focus();
  });

  // A picture dropped anywhere on the page is the post's (the browser would otherwise open the file instead).
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    document.body.classList.remove("dragging");
    const file = firstFile(event.dataTransfer);
    if (!file) return; // dropped text goes where the browser puts it
    event.preventDefault();
    setPicture(file);
  });
  // A pasted picture is the post's; pasted text goes into the text box as usual.
  document.addEventListener("paste", (event) => {
    const file = firstFile(event.clipboardData);
    if (!file) return;
    event.preventDefault();
    setPicture(file);
  });

  loadInfo();
})();
