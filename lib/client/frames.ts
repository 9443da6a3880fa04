/**
 * The SDK's frames: those it sends, those it receives (typed by lib/protocol/messages.ts, imported as types only: no
 * schema library reaches a browser), and the reading of a received one. A leaf: it knows nothing of what a frame
 * acts on (receivers.ts says that, dispatch.ts does it).
 */
import type { ClientMessage as ProtocolMessage, ServerMessage, SubscribedMany } from '../protocol/messages.js'
import type { Static } from 'typebox'

/** The request id of the `auth` message: an `error` reply with it refuses the token. */
export const AUTH_ID = 'auth'

/** Every frame the SDK sends: the protocol's client messages, a subscribe's id always its subscriptionId. */
export type ClientMessage = Exclude<ProtocolMessage, { type: 'subscribe' }> | (Extract<ProtocolMessage, { type: 'subscribe' }> & { id: string })

/** Every frame the server sends (lib/protocol/messages.ts). */
export type ServerFrame = ServerMessage

/** The data of the reply to a request for many. */
export type SubscribedManyData = Static<typeof SubscribedMany>['data']

/**
 * The server speaks the protocol, so its frames are not validated here (that would ship a schema library to every
 * browser); only what is read before the type is known is checked, so that a garbled frame is dropped rather than
 * thrown inside the socket's handler. A type this SDK does not know (a newer server's) is ignored by dispatch.
 */
export function isFrame (value: unknown): value is ServerFrame {
  if (typeof value !== 'object' || value === null) return false
  const { type, data } = value as { type?: unknown, data?: unknown }
  return typeof type === 'string' && (type === 'pong' || (typeof data === 'object' && data !== null))
}

/** A text frame as a server frame, or null when it is not one. */
export function parseServerFrame (text: string): ServerFrame | null {
  try {
    const value: unknown = JSON.parse(text)
    return isFrame(value) ? value : null
  } catch {
    return null
  }
}
