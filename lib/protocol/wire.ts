/**
 * The protocol's constants and rules, with no imports: the server and the client SDK (a dependency-free module for
 * browsers) both use this file. Message shapes are in messages.ts, the frames the server builds in encode.ts.
 */

/** Codes of `error` and `subscription_error` frames. */
export const WireError = {
  /** the frame is not JSON */
  invalidJson: 'invalid_json',
  /** JSON, but not a message of the protocol (unknown type, missing or wrong fields) */
  badRequest: 'bad_request',
  /** binary frames are not part of the protocol */
  binaryFrame: 'binary_not_supported',
  /** the entity type is neither declared nor discovered with an access rule */
  unknownEntityType: 'unknown_entity_type',
  /** no credentials, or credentials not valid, for a type that needs them */
  unauthenticated: 'unauthenticated',
  /** authenticated, but not allowed to view this entity */
  forbidden: 'forbidden',
  /** maxSubscriptionsPerConnection reached */
  tooManySubscriptions: 'too_many_subscriptions',
  /** limits.maxFiltersPerType distinct filters of the type are held on this server already, or the connection's or its address's share is taken */
  tooManyFilters: 'too_many_filters',
  /** subscribe/unsubscribe faster than subscribeRatePerSecond, auth more often than authMessagesPerMinute */
  rateLimited: 'rate_limited',
  /** presence: an `info` or a signal's `data` larger than the type allows (its JSON) */
  tooLarge: 'too_large',
  /** presence: setting info or sending a signal on an entity this socket has not joined */
  notMember: 'not_member',
  /** the server failed inside; the socket stays usable, retry */
  internal: 'internal_error'
} as const
export type WireErrorCode = typeof WireError[keyof typeof WireError]

/**
 * WebSocket close codes of the protocol. This server sends all but `internal`, `overloaded` and `forbidden`, which
 * the protocol reserves (a proxy or another server of the protocol may send them; clients must understand them).
 */
export const CloseCode = {
  normal: 1000,
  goingAway: 1001,
  policyViolation: 1008,
  tooLarge: 1009,
  internal: 1011,
  /** a deploy: the instance hands its sockets to the others, the reason saying when to come back (restartReason) */
  serviceRestart: 1012,
  overloaded: 1013,
  unauthenticated: 4401,
  forbidden: 4403,
  idleTimeout: 4408,
  slowConsumer: 4409,
  tooManyConnections: 4429
} as const

/** The reason of a 1012 close: come back after `retryMs` (plus a jitter of the client's own), to any instance. */
export function restartReason (retryMs: number): string {
  return `service restart; retry in ${Math.max(0, Math.round(retryMs))} ms`
}

/** The delay a close reason asks for (restartReason), or null. */
export function retryHintOf (reason: string): number | null {
  const match = /retry in (\d{1,7}) ms/.exec(reason)
  return match === null ? null : Number(match[1])
}

/** Close codes after which reconnecting cannot help (a client must not retry them blindly). */
export const FINAL_CLOSE_CODES: ReadonlySet<number> = new Set([CloseCode.policyViolation, CloseCode.tooLarge, CloseCode.forbidden])

/** The entity id of a type-wide (feed) subscription. */
export const FEED = '*'

/** What happened to an entity: its document, or its stream's events (`appended`) or the stream itself (`archived`). */
export const CHANGE_TYPES = ['created', 'updated', 'deleted', 'appended', 'archived'] as const
export type ChangeType = typeof CHANGE_TYPES[number]
/** What a filtered feed says besides: an entity began (`entered`) or stopped (`left`) matching its conditions. */
export const FILTER_CHANGE_TYPES = ['entered', 'left'] as const

/**
 * The net change of two changes of one entity, as a client sees it when it never got the first one's frame; null
 * when nothing is left to say: the entity was created and deleted while the client was not reading.
 */
export function mergeChangeType (first: string, last: string): string | null {
  if (first === 'created') return last === 'deleted' ? null : 'created'
  if (last === 'deleted') return 'deleted'
  // the client knew the entity before and it exists after: a re-creation is, to it, an update
  if (first === 'deleted' || last === 'created') return 'updated'
  return last
}

/**
 * The subscriptionId: `<entityType>:<entityId>`, which a client can compute itself (and unsubscribe with); a subscription that named
 * a tenant is `<entityType>@<tenantId>:<entityId>` (type names hold neither '@' nor ':', tenant ids no ':').
 */
export function subscriptionIdOf (entityType: string, entityId: string, tenantId?: string): string {
  return tenantId === undefined ? entityType + ':' + entityId : entityType + '@' + tenantId + ':' + entityId
}

/** The parts of a subscriptionId, or null when it is not one. */
export function parseSubscriptionId (subscriptionId: string): { entityType: string, entityId: string, tenantId?: string } | null {
  const match = /^([A-Za-z_][A-Za-z0-9_.]*)(?:@([^:]+))?:(.+)$/s.exec(subscriptionId)
  if (match === null) return null
  return match[2] === undefined ? { entityType: match[1], entityId: match[3] } : { entityType: match[1], tenantId: match[2], entityId: match[3] }
}

/*
 * Positions. Outbox mode's `<epoch>:<n>` can be resumed with `since` and is ordered within its epoch; the others
 * (`n:<txid>` in notify mode, `p:<instance>:<n>` for a host's publish) only tell changes apart.
 */

/** A notify-mode position: the writer's transaction (`:events` for the events it appended to a stream). */
export function notifyPosition (txid: string, { events = false }: { events?: boolean } = {}): string {
  return events ? 'n:' + txid + ':events' : 'n:' + txid
}

export function formatPosition (epoch: string, pos: number | string): string {
  return epoch + ':' + String(pos)
}

/** The parts of an outbox position (resumable with `since`); null for any other string. */
export function parsePosition (position: string): { epoch: string, pos: number } | null {
  const match = /^([0-9a-f]{8}):(\d{1,15})$/.exec(position)
  return match === null ? null : { epoch: match[1], pos: Number(match[2]) }
}

/** False only when both are outbox positions of one epoch and `position` is not later than `than`. */
export function isAfter (position: string | null, than: string | undefined): boolean {
  const a = position === null ? null : parsePosition(position)
  const b = than === undefined ? null : parsePosition(than)
  return a === null || b === null || a.epoch !== b.epoch || a.pos > b.pos
}
