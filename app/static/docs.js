// Renders /openapi.json: each operation with its parameters, request and answers; the schemas after.
"use strict";

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function schemaBlock(schema) {
  return element("pre", JSON.stringify(schema, null, 2));
}

function contentBlocks(parent, content) {
  for (const [type, media] of Object.entries(content || {})) {
    parent.append(element("h3", type));
    parent.append(schemaBlock(media["x-events"] ? { events: media["x-events"] } : media.schema));
  }
}

function operation(path, method, spec) {
  const box = element("details");
  const summary = element("summary");
  summary.append(element("span", method, { class: "method" }), element("code", path), document.createTextNode(" " + (spec.summary || "")));
  box.append(summary);
  if (spec.parameters) {
    box.append(element("h3", "Parameters"));
    box.append(schemaBlock(spec.parameters));
  }
  if (spec.requestBody) {
    box.append(element("h3", "Request"));
    contentBlocks(box, spec.requestBody.content);
  }
  for (const [status, answer] of Object.entries(spec.responses)) {
    box.append(element("h3", `${status}: ${answer.description}`));
    contentBlocks(box, answer.content);
  }
  return box;
}

async function render() {
  const main = document.getElementById("operations");
  const answer = await fetch("/openapi.json");
  const spec = await answer.json();
  main.replaceChildren();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, spec_] of Object.entries(methods)) main.append(operation(path, method, spec_));
  }
  const schemas = document.getElementById("schemas");
  schemas.append(element("h2", "Schemas"));
  for (const [name, schema] of Object.entries(spec.components.schemas)) {
    const box = element("details", undefined, { id: name });
    box.append(element("summary", name), schemaBlock(schema));
    schemas.append(box);
  }
}

render().catch((error) => {
  document.getElementById("operations").textContent = "The document could not be loaded: " + error;
});
