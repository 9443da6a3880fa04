/**
 * Authentication of a socket: a JWT (shared secret, PEM public key, or JWKS, via @fastify/jwt) from the
 * `Authorization: Bearer` header or `?token=` (browsers cannot set headers on WebSocket), Basic credentials of
 * service accounts (via @fastify/basic-auth, scrypt hashes), or anonymous when allowed. The same token check serves
 * the in-band `auth` message. Both plugins are registered in the route's own encapsulated scope, so a host's own
 * @fastify/jwt or @fastify/basic-auth is untouched.
 */
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fastifyJwt, { type JWT } from '@fastify/jwt'
import fastifyBasicAuth from '@fastify/basic-auth'
import { ANONYMOUS, type Principal } from './principal.js'
import { verifyPassword } from './passwords.js'
import { JwksFailure, JwksKeySet, type JwksKeySetOptions } from './jwks.js'
import type { ResolvedOptions } from '../options.js'

/** `noCredentials`: nothing was presented (where sign-in is required, the socket may still sign in in-band). */
export type Identity = { principal: Principal } | { failure: string, noCredentials?: boolean }

type BasicAuthHook = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void

const SYMMETRIC = ['HS256', 'HS384', 'HS512']
const ASYMMETRIC = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']
const FAILURE_WINDOW_MS = 60_000

/** A dotted path into the token's claims: `metadata.role`. */
function claim (payload: Record<string, unknown>, path: string): unknown {
  let value: unknown = payload
  for (const key of path.split('.')) {
    if (value === null || typeof value !== 'object') return undefined
    value = (value as Record<string, unknown>)[key]
  }
  return value
}

export interface AuthCounters {
  attempts: Record<'jwt' | 'basic' | 'anonymous', number>
  failures: Record<'jwt' | 'basic' | 'anonymous', number>
}

export class Authenticator {
  readonly counters: AuthCounters = { attempts: { jwt: 0, basic: 0, anonymous: 0 }, failures: { jwt: 0, basic: 0, anonymous: 0 } }
  private jwt: JWT | null = null
  private keySet: JwksKeySet | null = null
  private basic: BasicAuthHook | null = null
  private readonly accountOf = new WeakMap<FastifyRequest, Principal>()
  private readonly failuresByIp = new Map<string, { count: number, since: number }>()

  /** `keySetOptions`: settings of the JWKS key set (tests pass a fake clock). */
  constructor (
    private readonly auth: ResolvedOptions['auth'],
    private readonly log: FastifyBaseLogger,
    private readonly maxFailuresPerMinute = 30,
    private readonly keySetOptions: JwksKeySetOptions = {}
  ) {}

  private registered = false

  /**
   * Registers the authentication plugins in an encapsulated scope, once; the handles kept from them work for any
   * request, so other routes (the stats endpoint) authenticate through the same instance. With a JWKS endpoint the
   * key set is loaded before the first socket is accepted.
   */
  async register (scope: FastifyInstance): Promise<void> {
    if (this.registered) return
    this.registered = true
    const { jwt, basic } = this.auth
    if (jwt !== undefined) {
      // claims configured to be checked must be present: fast-jwt skips allowedIss/allowedAud for absent claims
      const requiredClaims = [
        ...(jwt.requireExpiry ? ['exp'] : []),
        ...(jwt.issuer !== undefined ? ['iss'] : []),
        ...(jwt.audience !== undefined ? ['aud'] : [])
      ]
      const verify = {
        algorithms: jwt.algorithms ?? (jwt.secret !== undefined ? SYMMETRIC : ASYMMETRIC),
        requiredClaims,
        ...(jwt.issuer !== undefined ? { allowedIss: jwt.issuer } : {}),
        ...(jwt.audience !== undefined ? { allowedAud: jwt.audience } : {})
      }
      let secret: string | { public: string } | ((request: FastifyRequest, token: { header: Record<string, unknown> }) => Promise<string>)
      if (jwt.secret !== undefined) secret = jwt.secret
      else if (jwt.publicKey !== undefined) secret = { public: jwt.publicKey }
      else {
        const keySet = new JwksKeySet(jwt.jwksUrl!, this.log, this.keySetOptions)
        this.keySet = keySet
        scope.addHook('onClose', async () => keySet.close())
        await keySet.start()
        secret = async (_request, token) => await this.jwksKey(token.header)
      }
      await scope.register(fastifyJwt, { namespace: 'changefeed', secret, verify } as Parameters<typeof fastifyJwt>[1])
      this.jwt = (scope.jwt as unknown as Record<string, JWT>).changefeed
    }
    if (basic !== undefined) {
      const accounts = new Map(basic.accounts.map((a) => [a.username, a]))
      await scope.register(fastifyBasicAuth, {
        authenticate: false,
        validate: async (username: string, password: string, request: FastifyRequest) => {
          const account = accounts.get(username)
          // verifyPassword takes as long for an unknown user as for a wrong password
          if (!await verifyPassword(password, account?.passwordHash ?? null) || account === undefined) throw new Error('bad credentials')
          this.accountOf.set(request, { kind: 'service', userId: account.username, roles: account.roles, expiresAt: null })
        }
      })
      this.basic = (scope as unknown as { basicAuth: BasicAuthHook }).basicAuth
    }
  }

  /** Who opens this socket: from the Authorization header, the `token` query parameter, or nobody. */
  async identify (request: FastifyRequest, reply: FastifyReply): Promise<Identity> {
    const header = request.headers.authorization
    if (typeof header === 'string' && /^basic\s/i.test(header)) return await this.limitFailures(request.ip, 'basic', async () => await this.fromBasic(request, reply))
    let token: string | undefined
    if (typeof header === 'string' && /^bearer\s/i.test(header)) token = header.replace(/^bearer\s+/i, '').trim()
    else {
      const query = request.query as Record<string, unknown> | undefined
      if (typeof query?.token === 'string') token = query.token
    }
    if (token === undefined) {
      this.counters.attempts.anonymous++
      if (this.auth.anonymous) return { principal: ANONYMOUS }
      this.counters.failures.anonymous++
      return { failure: 'credentials required', noCredentials: true }
    }
    const t = token
    return await this.limitFailures(request.ip, 'jwt', async () => await this.verifyToken(t))
  }

  /** Checks a JWT (at the upgrade and for the in-band `auth` message). */
  async verifyToken (token: string): Promise<Identity> {
    if (this.jwt === null) return { failure: 'token authentication is not configured' }
    try {
      let payload: Record<string, unknown>
      if (this.keySet !== null) {
        const decoded = this.jwt.decode<{ header: Record<string, unknown> }>(token, { complete: true })
        if (decoded === null || typeof decoded !== 'object') return { failure: 'FAST_JWT_MALFORMED' }
        payload = this.jwt.verify(token, { key: await this.jwksKey(decoded.header) })
      } else {
        payload = this.jwt.verify(token)
      }
      return this.principalOf(payload)
    } catch (err) {
      return { failure: String((err as { code?: string }).code ?? 'invalid token') }
    }
  }

  private principalOf (payload: Record<string, unknown>): Identity {
    const jwt = this.auth.jwt!
    const userId = claim(payload, jwt.userIdClaim)
    if (typeof userId !== 'string' && typeof userId !== 'number') return { failure: `no ${jwt.userIdClaim} claim` }
    const rawRoles = claim(payload, jwt.rolesClaim)
    const roles = (Array.isArray(rawRoles) ? rawRoles : rawRoles === undefined ? [] : [rawRoles]).filter((r): r is string => typeof r === 'string')
    const exp = typeof payload.exp === 'number' ? payload.exp * 1000 : null
    return { principal: { kind: 'user', userId: String(userId), roles, expiresAt: exp } }
  }

  private async fromBasic (request: FastifyRequest, reply: FastifyReply): Promise<Identity> {
    if (this.basic === null) return { failure: 'basic authentication is not configured' }
    const basic = this.basic
    const err = await new Promise<Error | undefined>((resolve) => basic(request, reply, resolve))
    const principal = this.accountOf.get(request)
    if (err !== undefined || principal === undefined) return { failure: 'bad credentials' }
    return { principal }
  }

  private async jwksKey (header: Record<string, unknown>): Promise<string> {
    const kid = typeof header.kid === 'string' ? header.kid : undefined
    const alg = typeof header.alg === 'string' ? header.alg : undefined
    if (kid === undefined || alg === undefined) throw Object.assign(new Error(JwksFailure.noKeyId), { code: JwksFailure.noKeyId })
    return await this.keySet!.key(kid, alg)
  }

  /** Too many failed attempts from one address: refuse before doing the (deliberately slow) checks. */
  private async limitFailures (ip: string, method: 'jwt' | 'basic', check: () => Promise<Identity>): Promise<Identity> {
    this.counters.attempts[method]++
    const now = Date.now()
    let entry = this.failuresByIp.get(ip)
    if (entry !== undefined && now - entry.since > FAILURE_WINDOW_MS) {
      this.failuresByIp.delete(ip)
      entry = undefined
    }
    if (entry !== undefined && entry.count >= this.maxFailuresPerMinute) {
      this.counters.failures[method]++
      return { failure: 'too many failed attempts' }
    }
    const identity = await check()
    if ('failure' in identity) {
      this.counters.failures[method]++
      if (this.failuresByIp.size > 10_000) this.failuresByIp.clear()
      const e = this.failuresByIp.get(ip) ?? { count: 0, since: now }
      e.count++
      this.failuresByIp.set(ip, e)
      this.log.info({ method, reason: identity.failure }, 'changefeed: authentication failed')
    }
    return identity
  }
}
