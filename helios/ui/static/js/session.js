// Who is logged in, and what their role may do.
//
// PERMISSIONS mirrors helios/control/auth.py PERMISSIONS (the API stays the authority: a
// button shown by mistake still gets a 403). The UI uses it only to leave out what a role
// may not do: a viewer sees no edit buttons, only an admin sees the admin pages.

import { whoami } from "./api.js";

export const PERMISSIONS = {
  "query": ["admin", "editor", "viewer"],
  "datasets.read": ["admin", "editor", "viewer"],
  "datasets.write": ["admin", "editor"],
  "dashboards.read": ["admin", "editor", "viewer"],
  "dashboards.write": ["admin", "editor"],
  "monitors.read": ["admin", "editor", "viewer"],
  "monitors.write": ["admin", "editor"],
  "settings.read": ["admin", "editor", "viewer"],
  "settings.write": ["admin"],
  "metrics": ["admin", "editor", "viewer"],
  "cluster.read": ["admin", "editor", "viewer"],
  "users.admin": ["admin"],
  "tokens.admin": ["admin"],
  "audit.read": ["admin"],
};

export class Session {
  constructor(name, role) {
    this.name = name;
    this.role = role;
  }

  /** Whether this role holds the permission (helios/control/auth.py names). */
  can(permission) {
    return (PERMISSIONS[permission] || []).includes(this.role);
  }
}

/** The session of the stored token (GET /api/v1/auth/me); a 401 there sends to the login page. */
export async function loadSession() {
  const me = await whoami();
  return new Session(me.name, me.role);
}
