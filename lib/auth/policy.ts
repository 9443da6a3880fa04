/**
 * Authorization by entity type, checked once at subscribe time (and again when the token is refreshed), never per
 * message. `owner` reads the owner from the document with a parameterized query.
 */
import type { Database } from '../capture/database.js'
import { quoteIdent } from '../capture/database.js'
import type { EntityType } from '../entities.js'
import { WireError } from '../errors.js'
import type { Principal } from './principal.js'

/** The entity id of a type-wide (feed) subscription. */
export const FEED = '*'

export type Denial = { code: typeof WireError.unauthenticated | typeof WireError.forbidden, reason: string }

export interface AuthorizeContext {
  entityType: string
  entityId: string
  entity: EntityType
  principal: Principal
}

/** A host's own rule: true allows, false denies (forbidden). Runs after the type's access kind allowed it. */
export type AuthorizeFunction = (ctx: AuthorizeContext) => boolean | Promise<boolean>

export class AccessPolicy {
  constructor (
    private readonly databases: Map<string, Database>,
    private readonly adminRoles: readonly string[],
    private readonly authorize?: AuthorizeFunction,
    /** false: an anonymous socket may watch nothing, not even public types, until it signs in */
    private readonly anonymousAllowed = true
  ) {}

  isAdmin (principal: Principal): boolean {
    return principal.roles.some((r) => this.adminRoles.includes(r))
  }

  /** null when allowed, otherwise why not. */
  async check (entity: EntityType, entityId: string, principal: Principal): Promise<Denial | null> {
    const denial = await this.checkAccessKind(entity, entityId, principal)
    if (denial !== null || this.authorize === undefined) return denial
    const allowed = await this.authorize({ entityType: entity.name, entityId, entity, principal })
    return allowed ? null : { code: WireError.forbidden, reason: 'denied by the authorize rule' }
  }

  private async checkAccessKind (entity: EntityType, entityId: string, principal: Principal): Promise<Denial | null> {
    if (entity.access === null) return { code: WireError.forbidden, reason: 'this entity type is not open to subscriptions' }
    if (entityId === FEED) return this.checkFeed(entity, principal)
    if (principal.kind === 'anonymous' && (entity.access !== 'public' || !this.anonymousAllowed)) {
      return { code: WireError.unauthenticated, reason: 'sign in to watch this entity type' }
    }
    if (entity.access === 'public') return null
    if (entity.access === 'authenticated' || this.isAdmin(principal)) return null
    if (entity.access === 'admin') return { code: WireError.forbidden, reason: 'an admin role is required' }
    return await this.isOwner(entity, entityId, principal)
      ? null
      : { code: WireError.forbidden, reason: 'only the owner may watch this entity' }
  }

  /** A feed shows every entity of the type: only for those who may view every one (public types, or admins). */
  private checkFeed (entity: EntityType, principal: Principal): Denial | null {
    if (!entity.feed) return { code: WireError.forbidden, reason: 'type-wide subscriptions are not enabled for this type' }
    if (principal.kind === 'anonymous' && (entity.access !== 'public' || !this.anonymousAllowed)) {
      return { code: WireError.unauthenticated, reason: 'sign in to watch this feed' }
    }
    if (entity.access === 'public' || this.isAdmin(principal)) return null
    return { code: WireError.forbidden, reason: 'a feed of this type needs an admin role' }
  }

  private async isOwner (entity: EntityType, entityId: string, principal: Principal): Promise<boolean> {
    if (principal.userId === null) return false
    if (entity.ownerPath === undefined || entity.ownerPath.length === 0) return entityId === principal.userId
    const db = this.databases.get(entity.database)
    if (db === undefined) return false
    try {
      const rows = await db.query<{ owner: string | null }>(
        `SELECT data #>> $2::text[] AS owner FROM ${quoteIdent(entity.schema)}.${quoteIdent(entity.table)} WHERE id = $1`,
        [entityId, entity.ownerPath])
      return rows.length > 0 && rows[0].owner === principal.userId
    } catch (err) {
      // an id that is not valid for the column's type (say, not a uuid) names no document anyone owns
      if ((err as { code?: string }).code === '22P02') return false
      throw err
    }
  }
}
