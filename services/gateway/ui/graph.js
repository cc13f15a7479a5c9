// The DAG as an SVG graph, laid out by dagre (layered: jobs left to right, condensed groups top to bottom). Nodes are jobs, or groups of jobs in the
// condensed view; each job node carries data-job-id and data-state (the tests' contract).
import { graphlib, layout } from "@dagrejs/dagre";
import { useMemo, useState } from "preact/hooks";

import { html } from "./components.js";
import { JOB_STATES, count } from "./format.js";

const JOB_SIZE = { width: 168, height: 46 };
const GROUP_SIZE = { width: 210, height: 64 };

/** Positions of `nodes` and the routes of `edges`; recomputed only when the structure changes. */
function useLayout(nodes, edges, key, direction = "LR") {
  return useMemo(() => {
    const g = new graphlib.Graph({ multigraph: false });
    g.setGraph({ rankdir: direction, nodesep: 18, ranksep: direction === "LR" ? 56 : 36, marginx: 16, marginy: 16 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const node of nodes) g.setNode(node.id, { ...(node.kind === "group" ? GROUP_SIZE : JOB_SIZE) });
    for (const edge of edges) if (g.hasNode(edge.from) && g.hasNode(edge.to)) g.setEdge(edge.from, edge.to);
    layout(g);
    const positions = new Map(nodes.map((n) => [n.id, g.node(n.id)]));
    const routes = edges
      .filter((e) => g.hasEdge(e.from, e.to))
      .map((e) => ({ ...e, points: g.edge(e.from, e.to).points }));
    const { width, height } = g.graph();
    return { positions, routes, width: Math.max(width, 1), height: Math.max(height, 1) };
  }, [key, direction]);
}

function path(points) {
  return points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

function JobNode({ node, pos, selected, onSelect }) {
  const { width, height } = JOB_SIZE;
  const activate = (e) => {
    if (e.type === "click" || e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      onSelect(node.id);
    }
  };
  return html`<g class=${`node job state-${node.state}${selected ? " selected" : ""}`}
    transform=${`translate(${pos.x - width / 2},${pos.y - height / 2})`}
    data-job-id=${node.id} data-state=${node.state} tabindex="0" role="button"
    aria-label=${`job ${node.id}, ${node.state}`} aria-pressed=${selected ? "true" : "false"}
    onClick=${activate} onKeyDown=${activate}>
    <title>${node.id}: ${node.state}</title>
    <rect class="node-box" width=${width} height=${height} rx="7" />
    <rect class="node-stripe" width="6" height=${height} rx="3" />
    <text class="node-title" x="16" y="19">${clip(node.label, 20)}</text>
    <text class="node-sub" x="16" y="36">${clip(`${node.state} · ${node.sub}`, 24)}</text>
  </g>`;
}

function GroupNode({ node, pos, selected, onSelect }) {
  const { width, height } = GROUP_SIZE;
  const total = node.total || 1;
  let x = 12;
  const bar = width - 24;
  const segments = [];
  for (const state of JOB_STATES) {
    const n = node.counts[state] ?? 0;
    if (!n) continue;
    const w = (n / total) * bar;
    segments.push(html`<rect class=${`seg state-${state}`} x=${x} y="42" width=${w} height="10" />`);
    x += w;
  }
  const activate = (e) => {
    if (e.type === "click" || e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      onSelect(node.id);
    }
  };
  const summary = JOB_STATES.filter((s) => node.counts[s]).map((s) => `${count(node.counts[s])} ${s}`).join(", ");
  return html`<g class=${`node group${selected ? " selected" : ""}`}
    transform=${`translate(${pos.x - width / 2},${pos.y - height / 2})`} data-group=${node.id}
    tabindex="0" role="button" aria-label=${`${node.label}: ${summary}`} onClick=${activate} onKeyDown=${activate}>
    <title>${node.label}: ${summary}</title>
    <rect class="node-box" width=${width} height=${height} rx="8" />
    <text class="node-title" x="12" y="20">${clip(node.label, 26)}</text>
    <text class="node-sub" x="12" y="35">${count(node.total)} jobs${node.counts.running ? ` · ${count(node.counts.running)} running` : ""}</text>
    <rect class="bar-track" x="12" y="42" width=${bar} height="10" />
    ${segments}
  </g>`;
}

/** The graph: `nodes` [{id, kind: "job"|"group", label, sub, state | counts, total}], `edges` [{from, to}]. */
export function Graph({ nodes, edges, layoutKey, selected, onSelect, label, direction = "LR" }) {
  const laid = useLayout(nodes, edges, layoutKey, direction);
  const [zoom, setZoom] = useState(1);
  // Shrink a wide graph to the panel, but never below legibility: past that it scrolls.
  const fit = Math.max(0.7, Math.min(1, 1100 / laid.width));
  const scale = zoom * fit;
  return html`<div class="graph">
    <div class="graph-tools" role="group" aria-label="Zoom">
      <button type="button" class="button small" aria-label="Zoom out" onClick=${() => setZoom(Math.max(0.25, zoom / 1.25))}>−</button>
      <button type="button" class="button small" aria-label="Fit to width" onClick=${() => setZoom(1)}>Fit</button>
      <button type="button" class="button small" aria-label="Zoom in" onClick=${() => setZoom(Math.min(4, zoom * 1.25))}>+</button>
    </div>
    <div class="graph-scroll">
      <svg width=${laid.width * scale} height=${laid.height * scale} viewBox=${`0 0 ${laid.width} ${laid.height}`}
        role="group" aria-label=${label}>
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M 0 0 L 10 5 L 0 10 z" class="arrow" />
          </marker>
        </defs>
        <g class="edges">
          ${laid.routes.map(
            (e) => html`<path class="edge" d=${path(e.points)} marker-end="url(#arrow)">
              ${e.count > 1 ? html`<title>${count(e.count)} dependencies</title>` : ""}
            </path>`,
          )}
        </g>
        <g class="nodes">
          ${nodes.map((node) => {
            const pos = laid.positions.get(node.id);
            if (!pos) return null;
            return node.kind === "group"
              ? html`<${GroupNode} key=${node.id} node=${node} pos=${pos} selected=${selected === node.id} onSelect=${onSelect} />`
              : html`<${JobNode} key=${node.id} node=${node} pos=${pos} selected=${selected === node.id} onSelect=${onSelect} />`;
          })}
        </g>
      </svg>
    </div>
  </div>`;
}
