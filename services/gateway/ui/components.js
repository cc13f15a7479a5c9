// Small shared pieces: the html tag, links that route in the page, badges, the confirmation dialog, notices.
import { h } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "htm";

export const html = htm.bind(h);

const routeListeners = new Set();

function navigate(href) {
  if (href === location.pathname + location.search) return;
  history.pushState(null, "", href);
  for (const listener of routeListeners) listener();
}

/** The current path; re-renders on navigation (links and the back button). */
export function usePath() {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const update = () => setPath(location.pathname);
    routeListeners.add(update);
    addEventListener("popstate", update);
    return () => {
      routeListeners.delete(update);
      removeEventListener("popstate", update);
    };
  }, []);
  return path;
}

export function Link({ href, children, ...rest }) {
  const onClick = (event) => {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(href);
  };
  return html`<a href=${href} onClick=${onClick} ...${rest}>${children}</a>`;
}

export function Badge({ state }) {
  return html`<span class="badge state-${state}" data-badge=${state}>${state}</span>`;
}

/** Re-render every `interval` ms (for "3 s ago" and running bars). */
export function useNow(interval = 1000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), interval);
    return () => clearInterval(timer);
  }, [interval]);
  return now;
}

let askConfirm = null;

/** Ask before a destructive action: resolves true when the user confirms. */
export function confirmAction(title, text, action) {
  return askConfirm ? askConfirm({ title, text, action }) : Promise.resolve(false);
}

/** The one modal confirmation dialog (a native <dialog>: focus stays inside, Escape cancels). */
export function ConfirmHost() {
  const ref = useRef(null);
  const [request, setRequest] = useState(null);
  useEffect(() => {
    askConfirm = (req) =>
      new Promise((resolve) => {
        setRequest({ ...req, resolve });
      });
    return () => {
      askConfirm = null;
    };
  }, []);
  useEffect(() => {
    if (request && ref.current && !ref.current.open) ref.current.showModal();
  }, [request]);
  const close = (answer) => {
    ref.current?.close();
    request?.resolve(answer);
    setRequest(null);
  };
  return html`
    <dialog ref=${ref} class="dialog" aria-labelledby="confirm-title" onCancel=${() => close(false)}>
      ${request &&
      html`<form method="dialog" onSubmit=${(e) => { e.preventDefault(); close(true); }}>
        <h2 id="confirm-title">${request.title}</h2>
        <p>${request.text}</p>
        <div class="dialog-actions">
          <button type="button" class="button" onClick=${() => close(false)}>Keep it</button>
          <button type="submit" class="button danger" data-action="confirm" autofocus>${request.action}</button>
        </div>
      </form>`}
    </dialog>
  `;
}

const noticeListeners = new Set();

/** A short message in the page's live region (screen readers announce it). */
export function notify(text, kind = "info") {
  for (const listener of noticeListeners) listener({ text, kind, at: Date.now() });
}

export function Notices() {
  const [notice, setNotice] = useState(null);
  useEffect(() => {
    const listener = (n) => setNotice(n);
    noticeListeners.add(listener);
    return () => noticeListeners.delete(listener);
  }, []);
  useEffect(() => {
    if (!notice) return undefined;
    const timer = setTimeout(() => setNotice(null), 6000);
    return () => clearTimeout(timer);
  }, [notice]);
  return html`<div class="notices" role="status" aria-live="polite">
    ${notice && html`<div class="notice notice-${notice.kind}">${notice.text}</div>`}
  </div>`;
}

export function LiveState({ state }) {
  const text = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…", closed: "ended" }[state];
  return html`<span class="live live-${state}" data-stream=${state} title="Live updates (server-sent events)">
    <span class="dot" aria-hidden="true"></span>${text}
  </span>`;
}

export function ErrorLine({ error }) {
  return error ? html`<p class="error-line" role="alert">${error}</p>` : null;
}
