/** Who is on the other end of a socket. Established at the upgrade; replaced by an in-band `auth` message. */
export interface Principal {
  kind: 'anonymous' | 'user' | 'service'
  /** the user id (JWT user-id claim) or the service account's username */
  userId: string | null
  roles: readonly string[]
  /** the tenant the principal belongs to (auth.jwt.tenantClaim, a service account's tenant), or null */
  tenantId: string | null
  /** epoch ms when the credentials stop being valid, if they expire */
  expiresAt: number | null
}

export const ANONYMOUS: Principal = Object.freeze({ kind: 'anonymous', userId: null, roles: [], tenantId: null, expiresAt: null })

/**
 * Whether two principals are the same identity with the same rights: what access depends on. A token refresh
 * between such principals moves only the expiry.
 */
export function sameIdentity (a: Principal, b: Principal): boolean {
  return a.kind === b.kind && a.userId === b.userId && a.tenantId === b.tenantId &&
    a.roles.length === b.roles.length && a.roles.every((role) => b.roles.includes(role)) && b.roles.every((role) => a.roles.includes(role))
}
