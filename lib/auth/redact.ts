/**
 * Credentials out of the logs: browsers send a token in the URL (`?token=`, since they cannot set headers on a
 * WebSocket), and Fastify logs the URL of every request. Every route the plugin registers logs its requests through
 * `requestLogSerializer`; a request for another path (`/ws/?token=`, a typo) is logged by the host's logger and
 * not-found handler, to which the standalone server, and a host that wants it, gives these too.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'

const CREDENTIAL_PARAMETERS = new Set(['token', 'access_token', 'password'])

/** The parameter name as the query-string parser reads it: `%74oken` and `TOKEN` are a token too. */
function isCredential (name: string): boolean {
  let decoded = name
  try {
    decoded = decodeURIComponent(name.replace(/\+/g, ' '))
  } catch {
    // a malformed escape: compared as it is
  }
  return CREDENTIAL_PARAMETERS.has(decoded.toLowerCase())
}

/** The URL with the values of `token`, `access_token` and `password` query parameters (any case) replaced. */
export function redactUrl (url: string): string {
  const start = url.indexOf('?')
  if (start < 0) return url
  const parameters = url.slice(start + 1).split('&').map((parameter) => {
    const name = parameter.split('=', 1)[0]
    return isCredential(name) ? `${name}=[redacted]` : parameter
  })
  return `${url.slice(0, start + 1)}${parameters.join('&')}`
}

/** Fastify's request log fields, with the URL redacted: the `logSerializers.req` of every route of the plugin. */
export function requestLogSerializer (request: FastifyRequest): Record<string, unknown> {
  return { method: request.method, url: redactUrl(request.url), host: request.host, remoteAddress: request.ip, remotePort: request.socket?.remotePort }
}

/**
 * Fastify's answer to a request no route matches, and its log line, with the URL redacted (Fastify's own handler
 * writes the URL into both): `app.setNotFoundHandler(redactedNotFound)`.
 */
export function redactedNotFound (request: FastifyRequest, reply: FastifyReply): void {
  const message = `Route ${request.method}:${redactUrl(request.url)} not found`
  request.log.info(message)
  void reply.code(404).send({ message, error: 'Not Found', statusCode: 404 })
}

/**
 * A connection URL (or a comma-separated list of them) without its secret, for errors and logs:
 * `redis://user:secret@host` → `redis://user:[redacted]@host`, `nats://token@host` → `nats://[redacted]@host`.
 */
export function redactCredentials (url: string): string {
  return url.replace(/(\/\/)([^@/?#,]*)@/g, (_match, slashes: string, userinfo: string) => {
    const colon = userinfo.indexOf(':')
    return `${slashes}${colon < 0 ? '[redacted]' : userinfo.slice(0, colon) + ':[redacted]'}@`
  })
}
