// The dashboard's shell: header, navigation, sign-in, and the page for the current path.
import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";

import { hasToken, onAuth, setToken } from "./api.js";
import { ConfirmHost, Link, Notices, html, usePath } from "./components.js";
import { ExecutionPage } from "./execution.js";
import { ExecutionsPage } from "./executions.js";
import { OverviewPage } from "./overview.js";
import { SchedulesPage } from "./schedules.js";

function route(path) {
  const one = path.match(/^\/ui\/executions\/([A-Za-z0-9_-]{1,128})\/?$/);
  if (one) return { page: "execution", id: one[1] };
  if (/^\/ui\/executions\/?$/.test(path)) return { page: "executions" };
  if (/^\/ui\/schedules\/?$/.test(path)) return { page: "schedules" };
  if (path === "/" || /^\/ui\/?$/.test(path)) return { page: "overview" };
  return { page: "missing" };
}

function SignIn({ open, onClose }) {
  const ref = useRef(null);
  const [value, setValue] = useState("");
  useEffect(() => {
    if (open && ref.current && !ref.current.open) ref.current.showModal();
    if (!open && ref.current?.open) ref.current.close();
  }, [open]);
  const submit = (event) => {
    event.preventDefault();
    setToken(value);
    setValue("");
    onClose();
  };
  return html`
    <dialog ref=${ref} class="dialog" aria-labelledby="signin-title" onCancel=${onClose}>
      <form onSubmit=${submit}>
        <h2 id="signin-title">API token</h2>
        <p>
          This gateway asks for a bearer token. It stays in this page's memory only and is sent with every
          request; reloading the page forgets it.
        </p>
        <label class="field">
          <span>Token</span>
          <input type="password" autocomplete="off" required value=${value}
            onInput=${(e) => setValue(e.currentTarget.value)} />
        </label>
        <div class="dialog-actions">
          ${hasToken() && html`<button type="button" class="button" onClick=${() => { setToken(null); onClose(); }}>
            Forget token
          </button>`}
          <button type="button" class="button" onClick=${onClose}>Close</button>
          <button type="submit" class="button primary">Use token</button>
        </div>
      </form>
    </dialog>
  `;
}

function App() {
  const path = usePath();
  const [auth, setAuth] = useState({ token: hasToken(), needed: false });
  const [signIn, setSignIn] = useState(false);
  useEffect(
    () =>
      onAuth((state) => {
        setAuth(state);
        if (state.needed) setSignIn(true);
      }),
    [],
  );
  const current = route(path);
  const nav = (href, label, active) =>
    html`<${Link} href=${href} class=${active ? "nav-link active" : "nav-link"}
      aria-current=${active ? "page" : undefined}>${label}</${Link}>`;
  let page;
  // A new token re-mounts the page, so its requests and streams start again with it.
  const key = `${path}:${auth.token}`;
  if (current.page === "overview") page = html`<${OverviewPage} key=${key} />`;
  else if (current.page === "executions") page = html`<${ExecutionsPage} key=${key} />`;
  else if (current.page === "execution") page = html`<${ExecutionPage} key=${key} id=${current.id} />`;
  else if (current.page === "schedules") page = html`<${SchedulesPage} key=${key} />`;
  else page = html`<section class="panel"><h1>Not found</h1><p>No page at ${path}.</p></section>`;
  return html`
    <a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <${Link} href="/ui/" class="brand" aria-label="jetdag overview">jetdag</${Link}>
      <nav aria-label="Main">
        ${nav("/ui/", "Overview", current.page === "overview")}
        ${nav("/ui/executions", "Executions", current.page === "executions" || current.page === "execution")}
        ${nav("/ui/schedules", "Schedules", current.page === "schedules")}
      </nav>
      <div class="top-right">
        <button class="button small" type="button" onClick=${() => setSignIn(true)} data-action="sign-in">
          ${auth.token ? "Token set" : "Sign in"}
        </button>
      </div>
    </header>
    <main id="main" tabindex="-1">${page}</main>
    <${Notices} />
    <${ConfirmHost} />
    <${SignIn} open=${signIn} onClose=${() => setSignIn(false)} />
  `;
}

render(html`<${App} />`, document.getElementById("app"));
