/**
 * Authorization by entity type, checked once at subscribe time (and again when the token is refreshed), never per
 * message. `owner` reads the owner from the document with a parameterized query, within the entity's tenant.
 *
 * Tenancy: an entity of a tenanted type is (type, tenant, id). A principal that belongs to a tenant watches its own
 * tenant's entities, never another's, unless it has an admin role. Without a tenant of its own (anonymous, or no
 * tenant claim) it watches every tenant's entity of that id — for `public` types, or for any type when no tenant
 * claim is configured at all — and names a tenant to watch one.
 */
import type { Database } from '../capture/database.js'
import { quoteIdent, readAs } from '../capture/database.js'
import type { EntityRegistry, EntityType } from '../entities.js'
import { WireError } from '../errors.js'
import { FEED } from '../route/channels.js'
import type { Principal } from './principal.js'

export { FEED }

export type Denial = { code: typeof WireError.unauthenticated | typeof WireError.forbidden | typeof WireError.badRequest, reason: string }

export interface AuthorizeContext {
  entityType: string
  entityId: string
  /** tenanted types: the tenant whose entity is watched; null: every tenant's */
  tenantId: string | null
  entity: EntityType
  principal: Principal
}

/** A host's own rule: true allows, false denies (forbidden). Runs after the type's access kind allowed it. */
export type AuthorizeFunction = (ctx: AuthorizeContext) => boolean | Promise<boolean>

export interface PolicyOptions {
  adminRoles: readonly string[]
  authorize?: AuthorizeFunction
  /** false: an anonymous socket may watch nothing, not even public types, until it signs in */
  anonymousAllowed: boolean
  /** principals carry tenants (auth.jwt.tenantClaim is configured) */
  tenantClaim: boolean
}

const NO_TENANT: Denial = { code: WireError.forbidden, reason: 'the credentials name no tenant' }

export class AccessPolicy {
  constructor (
    private readonly databases: ReadonlyMap<string, Database>,
    private readonly registry: EntityRegistry,
    private readonly options: PolicyOptions
  ) {}

  isAdmin (principal: Principal): boolean {
    return principal.roles.some((r) => this.options.adminRoles.includes(r))
  }

  /**
   * The tenant whose entity a request watches: the one it names, else the principal's own; null for every tenant
   * (or an untenanted type). A denial when the principal may not choose that.
   */
  scope (entity: EntityType, requested: string | undefined, principal: Principal): { tenantId: string | null } | Denial {
    const admin = this.isAdmin(principal)
    // access first: a principal the type is closed to gets one answer, whatever tenant it names, and so cannot
    // tell a tenant that has a database from one that has none
    const refused = this.refusal(entity, principal, admin)
    if (refused !== null) return refused
    if (entity.tenancy === 'none') {
      return requested === undefined ? { tenantId: null } : { code: WireError.badRequest, reason: `${entity.name} is not tenanted: no tenantId` }
    }
    const own = principal.tenantId
    if (requested === undefined) return { tenantId: own !== null && !admin ? own : null }
    if (own !== null && requested !== own && !admin) return { code: WireError.forbidden, reason: 'another tenant\'s entity' }
    if (entity.tenancy === 'database' && this.registry.databaseFor(entity, requested) === undefined) {
      return { code: WireError.badRequest, reason: `no database of tenant "${requested}" holds ${entity.name}` }
    }
    return { tenantId: requested }
  }

  /** null when allowed, otherwise why not. */
  async check (entity: EntityType, entityId: string, tenantId: string | null, principal: Principal): Promise<Denial | null> {
    const denial = await this.checkAccessKind(entity, entityId, tenantId, principal)
    if (denial !== null || this.options.authorize === undefined) return denial
    const allowed = await this.options.authorize({ entityType: entity.name, entityId, tenantId, entity, principal })
    return allowed ? null : { code: WireError.forbidden, reason: 'denied by the authorize rule' }
  }

  /**
   * What refuses this principal every entity of the type, whatever the request names (entity, tenant): the access
   * kind alone, before anything is looked up.
   */
  private refusal (entity: EntityType, principal: Principal, admin: boolean): Denial | null {
    if (entity.access === null) return { code: WireError.forbidden, reason: 'this entity type is not open to subscriptions' }
    if (principal.kind === 'anonymous' && (entity.access !== 'public' || !this.options.anonymousAllowed)) {
      return { code: WireError.unauthenticated, reason: 'sign in to watch this entity type' }
    }
    if (entity.access === 'admin' && !admin) return { code: WireError.forbidden, reason: 'an admin role is required' }
    if (this.needsTenant(entity, admin) && principal.tenantId === null) return NO_TENANT
    return null
  }

  /**
   * Every tenant's entities, or any tenant's for credentials that name none, are for public types, admins, and
   * deployments whose principals carry no tenants at all.
   */
  private needsTenant (entity: EntityType, admin: boolean): boolean {
    return entity.tenancy !== 'none' && entity.access !== 'public' && !admin && this.options.tenantClaim
  }

  private async checkAccessKind (entity: EntityType, entityId: string, tenantId: string | null, principal: Principal): Promise<Denial | null> {
    const admin = this.isAdmin(principal)
    const refused = this.refusal(entity, principal, admin)
    if (refused !== null) return refused
    if (tenantId === null && this.needsTenant(entity, admin)) return NO_TENANT
    if (entityId === FEED) return this.checkFeed(entity, admin)
    if (entity.access === 'public' || entity.access === 'authenticated' || admin) return null
    if (entity.tenancy !== 'none' && tenantId === null) return { code: WireError.badRequest, reason: 'name the tenant (tenantId) of an owned entity' }
    return await this.isOwner(entity, entityId, tenantId, principal)
      ? null
      : { code: WireError.forbidden, reason: 'only the owner may watch this entity' }
  }

  /** A feed shows every entity of the type: only for those who may view every one (public types, or admins). */
  private checkFeed (entity: EntityType, admin: boolean): Denial | null {
    if (!entity.feed) return { code: WireError.forbidden, reason: 'type-wide subscriptions are not enabled for this type' }
    if (entity.access === 'public' || admin) return null
    return { code: WireError.forbidden, reason: 'a feed of this type needs an admin role' }
  }

  private async isOwner (entity: EntityType, entityId: string, tenantId: string | null, principal: Principal): Promise<boolean> {
    if (principal.userId === null) return false
    if (entity.ownerPath === undefined || entity.ownerPath.length === 0) return entityId === principal.userId
    const database = this.registry.databaseFor(entity, tenantId)
    const db = database === undefined ? undefined : this.databases.get(database)
    if (database === undefined || db === undefined) return false
    const byTenant = entity.tenancy === 'conjoined'
    try {
      const rows = await readAs<{ owner: string | null }>(db, this.registry.settingOf(database, entity), tenantId,
        `SELECT data #>> $2::text[] AS owner FROM ${quoteIdent(entity.schema)}.${quoteIdent(entity.table)} WHERE id OPERATOR(pg_catalog.=) $1${byTenant ? ' AND tenant_id OPERATOR(pg_catalog.=) $3' : ''}`,
        byTenant ? [entityId, entity.ownerPath, tenantId] : [entityId, entity.ownerPath])
      return rows.length > 0 && rows[0].owner === principal.userId
    } catch (err) {
      // an id that is not valid for the column's type (say, not a uuid) names no document anyone owns
      if ((err as { code?: string }).code === '22P02') return false
      throw err
    }
  }
}
