/**
 * The client's own coded errors. The client has no dependencies (no @fastify/error), so this is a plain Error with
 * a `code`: compare the code, never the message.
 */

export const ClientError = {
  /** no `WebSocket` option and no global WebSocket in this runtime (Node before 22) */
  noWebSocket: 'CHANGEFEED_NO_WEBSOCKET'
} as const
export type ClientErrorCode = typeof ClientError[keyof typeof ClientError]

export class ChangefeedClientError extends Error {
  constructor (readonly code: ClientErrorCode, message: string) {
    super(message)
    this.name = 'ChangefeedClientError'
  }
}
