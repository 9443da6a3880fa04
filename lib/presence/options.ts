/** The options of presence and signals, per entity type (part of lib/options.ts: `entities.<Type>.presence`, `.signals`). */
import Type, { type Static } from 'typebox'

export const PresenceOption = Type.Union([
  Type.Boolean(),
  Type.Object({
    maxMembers: Type.Optional(Type.Integer({ minimum: 1, default: 100, description: 'members listed in `subscribed` and in events; above it sockets get counts only, at most once a second' })),
    intervalMs: Type.Optional(Type.Integer({ minimum: 10, default: 200, description: 'presence events of one entity go out batched, at most one frame per this interval per socket' })),
    infoMaxBytes: Type.Optional(Type.Integer({ minimum: 2, default: 1024, description: 'largest `info` (its JSON); larger: `too_large`' }))
  }, { additionalProperties: false })
], { description: 'who is on an entity (defaults: maxMembers 100, intervalMs 200, infoMaxBytes 1024): `true` (or the settings) lets signed-in subscribers join as members with an `info`, and any subscriber watch the members; see lib/protocol/README.md#presence' })

export const SignalsOption = Type.Union([
  Type.Boolean(),
  Type.Object({
    ratePerSecond: Type.Optional(Type.Number({ exclusiveMinimum: 0, default: 20, description: 'signals per socket and entity (a token bucket of a second\'s worth); excess: `rate_limited`' })),
    maxBytes: Type.Optional(Type.Integer({ minimum: 2, default: 2048, description: 'largest signal `data` (its JSON); larger: `too_large`' }))
  }, { additionalProperties: false })
], { description: 'ephemeral signals between the members of an entity with presence (cursors, typing): `true` or the settings (defaults: ratePerSecond 20 per socket and entity, maxBytes 2048 of JSON)' })

export interface PresenceSettings { maxMembers: number, intervalMs: number, infoMaxBytes: number }
export interface SignalSettings { ratePerSecond: number, maxBytes: number }

const PRESENCE_DEFAULTS: PresenceSettings = { maxMembers: 100, intervalMs: 200, infoMaxBytes: 1024 }
const SIGNAL_DEFAULTS: SignalSettings = { ratePerSecond: 20, maxBytes: 2048 }

/** A type's presence settings, null when it has none. */
export function presenceSettings (option: Static<typeof PresenceOption> | undefined): PresenceSettings | null {
  if (option === undefined || option === false) return null
  return option === true ? PRESENCE_DEFAULTS : { ...PRESENCE_DEFAULTS, ...option }
}

/** A type's signal settings, null when it has none (signals need presence: only members send them). */
export function signalSettings (option: Static<typeof SignalsOption> | undefined): SignalSettings | null {
  if (option === undefined || option === false) return null
  return option === true ? SIGNAL_DEFAULTS : { ...SIGNAL_DEFAULTS, ...option }
}
