// app.js — sign-in, the role's navigation, hash routing and live updates.
// Pages register in GM.pages; each has render(el, args) and may have
// refresh(), which the poller calls every few seconds without reloading.
'use strict';

(function () {
  const h = GM.h;
  const POLL_MS = 5000;
  GM.pages = {};
  const NAV = {
    admin: [['admin/fleet', 'Fleet'], ['admin/nodes', 'Nodes'], ['admin/queue', 'Queue'], ['admin/revenue', 'Revenue'],
      ['admin/ledger', 'Ledger'], ['admin/policy', 'Policy'], ['tenant/jobs', 'Jobs']],
    tenant: [['tenant/jobs', 'My jobs'], ['tenant/submit', 'Submit'], ['tenant/spend', 'Spend']],
    operator: [['operator/nodes', 'My nodes'], ['operator/earnings', 'Earnings']],
  };
  const HOME = { admin: 'admin/fleet', tenant: 'tenant/jobs', operator: 'operator/nodes' };
  let current = null, pollTimer = null, polling = false;

  function banner(text) {
    const b = document.getElementById('banner');
    b.textContent = text || '';
    b.hidden = !text;
  }
  GM.banner = banner;

  function signOut(message) {
    sessionStorage.removeItem(GM.TOKEN_KEY);
    sessionStorage.removeItem(GM.ROLE_KEY);
    current = null;
    route();
    banner(message || '');
  }
  GM.onUnauthenticated = (err) => signOut(`Signed out: the server no longer accepts this token (${err.code}: ${err.apiMessage}). Sign in again.`);

  // Which role a token has: the server says (IdentityService.GetIdentity).
  async function detectRole(token) {
    const r = await GM.call('IdentityService', 'GetIdentity', {}, token);
    const role = { ROLE_ADMIN: 'admin', ROLE_TENANT: 'tenant', ROLE_OPERATOR: 'operator' }[r.role];
    if (!role) throw new GM.ApiError('internal', 'unknown role ' + r.role);
    return role;
  }

  function signInPage(view) {
    const err = h('div', { id: 'signin-error' });
    const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', placeholder: 'gm_…', required: true, 'aria-label': 'API token' });
    const form = h('form', {
      onsubmit: async (ev) => {
        ev.preventDefault();
        err.replaceChildren();
        const token = input.value.trim();
        try {
          const role = await detectRole(token);
          sessionStorage.setItem(GM.TOKEN_KEY, token);
          sessionStorage.setItem(GM.ROLE_KEY, role);
          banner('');
          location.hash = '#/' + HOME[role];
          route();
        } catch (e) {
          err.append(GM.errorBox(e));
        }
      },
    }, h('label', {}, 'API token (admin, tenant or operator)', input), h('button', { type: 'submit', id: 'signin' }, 'Sign in'), err);
    view.replaceChildren(h('div', { class: 'signin' }, h('h1', {}, 'Sign in to gpumatch'),
      h('p', { class: 'muted' }, 'The token stays in this tab (session storage) and is sent only to this server.'), form));
  }

  function nav(role, path) {
    const el = document.getElementById('nav');
    el.replaceChildren(...(NAV[role] || []).map(([p, l]) => h('a', { href: '#/' + p, class: path.startsWith(p) ? 'current' : null }, l)));
    document.getElementById('who').textContent = role ? `signed in as ${role}` : '';
    document.getElementById('signout').hidden = !role;
  }

  async function route() {
    const view = document.getElementById('view');
    const role = GM.role();
    if (!GM.token() || !role) {
      nav('', '');
      current = null;
      signInPage(view);
      return;
    }
    let path = location.hash.replace(/^#\/?/, '');
    if (!path) path = HOME[role];
    const parts = path.split('/');
    const key = parts.slice(0, 2).join('/');
    const page = GM.pages[key];
    nav(role, path);
    const el = h('section', { class: 'page', 'data-page': key });
    view.replaceChildren(el);
    current = null;
    if (!page) {
      el.append(h('h1', {}, 'Not found'), h('p', {}, `No page ${path}.`));
      return;
    }
    document.title = `${page.title} · gpumatch`;
    const ctx = { el, args: parts.slice(2), role, alive: true };
    current = { page, ctx };
    try {
      await page.render(el, ctx);
      GM.stamp();
    } catch (e) {
      GM.showError(el, e, page);
    }
  }

  // An error for a whole page; a refused role is said plainly.
  GM.showError = function (el, e, page) {
    if (e.code === 'permission_denied' || e.code === 'unauthenticated') {
      el.replaceChildren(h('h1', {}, page ? page.title : 'Not allowed'),
        h('div', { class: 'error', 'data-code': e.code, id: 'refused' },
          `You cannot open this page: it is for ${page && page.role ? page.role + 's' : 'another role'}, and the server refused your token (${e.code}: ${e.apiMessage}).`));
    } else {
      el.append(GM.errorBox(e));
    }
  };

  GM.stamp = () => {
    document.getElementById('updated').textContent = 'updated ' + new Date().toISOString().slice(11, 19) + 'Z';
  };

  async function poll() {
    if (polling || !current || !current.page.refresh || document.hidden) return;
    polling = true;
    const c = current;
    try {
      await c.page.refresh(c.ctx.el, c.ctx);
      if (c === current) GM.stamp();
    } catch (e) {
      if (c === current && e.code !== 'unauthenticated') banner(`Live update failed: ${e.code}: ${e.apiMessage || e.message}`);
    } finally {
      polling = false;
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
    window.addEventListener('hashchange', () => { banner(''); route(); });
    pollTimer = setInterval(poll, POLL_MS);
    route();
  });
  GM.route = route;
  GM.pollNow = poll;
})();
