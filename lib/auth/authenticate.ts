/**
 * Authentication of a socket: a JWT (shared secret, PEM public key, or JWKS, via @fastify/jwt) from the
 * `Authorization: Bearer` header or `?token=` (browsers cannot set headers on WebSocket), Basic credentials of
 * service accounts (via @fastify/basic-auth, scrypt hashes), or anonymous when allowed. The in-band `auth` message
 * goes through the same token check, limits and counters. Both plugins are registered in the route's own
 * encapsulated scope, so a host's own @fastify/jwt or @fastify/basic-auth is untouched.
 */
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fastifyJwt, { type JWT } from '@fastify/jwt'
import fastifyBasicAuth from '@fastify/basic-auth'
import { ANONYMOUS, type Principal } from './principal.js'
import { verifyPassword } from './passwords.js'
import { JwksFailure, JwksKeySet, type JwksKeySetOptions } from './jwks.js'
import { ConcurrencyLimit, SignInLimiter } from './limiter.js'
import type { ResolvedOptions } from '../options.js'

/** `noCredentials`: nothing was presented (where sign-in is required, the socket may still sign in in-band). */
export type Identity = { principal: Principal } | { failure: string, noCredentials?: boolean }

/**
 * The `failure` codes of the authenticator's own refusals; a refused JWT has the verifier's code instead
 * (`FAST_JWT_EXPIRED`, `FAST_JWT_MISSING_REQUIRED_CLAIM`, … or a JwksFailure).
 */
export const AuthFailure = {
  credentialsRequired: 'credentials_required',
  badCredentials: 'bad_credentials',
  /** refused unchecked: too many attempts from the address or at the account, or too many password checks waiting */
  tooManyAttempts: 'too_many_attempts',
  notConfigured: 'method_not_configured',
  noUserId: 'no_user_id',
  invalidToken: 'invalid_token'
} as const

type BasicAuthHook = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void
type Method = 'jwt' | 'basic' | 'anonymous'

const SYMMETRIC = ['HS256', 'HS384', 'HS512']
const ASYMMETRIC = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']
/** scrypt derivations at once, and how many more may wait for one */
const MAX_PASSWORD_CHECKS = 4
const MAX_WAITING_PASSWORD_CHECKS = 32

/** A dotted path into the token's claims: `metadata.role`. */
function claim (payload: Record<string, unknown>, path: string): unknown {
  let value: unknown = payload
  for (const key of path.split('.')) {
    if (value === null || typeof value !== 'object') return undefined
    value = (value as Record<string, unknown>)[key]
  }
  return value
}

/** The username of `Authorization: Basic`, as @fastify/basic-auth reads it (before the first colon); null if none. */
function basicUsername (header: string): string | null {
  const decoded = Buffer.from(header.replace(/^basic\s+/i, '').trim(), 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  return colon < 0 ? null : decoded.slice(0, colon)
}

export interface AuthCounters {
  attempts: Record<Method, number>
  failures: Record<Method, number>
}

export class Authenticator {
  readonly counters: AuthCounters = { attempts: { jwt: 0, basic: 0, anonymous: 0 }, failures: { jwt: 0, basic: 0, anonymous: 0 } }
  private jwt: JWT | null = null
  private keySet: JwksKeySet | null = null
  private basic: BasicAuthHook | null = null
  private readonly accountOf = new WeakMap<FastifyRequest, Principal>()
  private readonly limiter: SignInLimiter
  private readonly passwordChecks = new ConcurrencyLimit(MAX_PASSWORD_CHECKS, MAX_WAITING_PASSWORD_CHECKS)
  private registered = false

  /** `keySetOptions`: settings of the JWKS key set; its `clock` also times the attempt limits (tests pass a fake). */
  constructor (
    private readonly auth: ResolvedOptions['auth'],
    private readonly log: FastifyBaseLogger,
    maxFailuresPerMinute = 30,
    private readonly keySetOptions: JwksKeySetOptions = {}
  ) {
    this.limiter = new SignInLimiter(maxFailuresPerMinute, keySetOptions.clock)
  }

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
          if (!await verifyPassword(password, account?.passwordHash ?? null) || account === undefined) throw new Error(AuthFailure.badCredentials)
          this.accountOf.set(request, { kind: 'service', userId: account.username, roles: account.roles, tenantId: account.tenant ?? null, expiresAt: null })
        }
      })
      this.basic = (scope as unknown as { basicAuth: BasicAuthHook }).basicAuth
    }
  }

  /** Who opens this socket: from the Authorization header, the `token` query parameter, or nobody. */
  async identify (request: FastifyRequest, reply: FastifyReply): Promise<Identity> {
    const header = request.headers.authorization
    if (typeof header === 'string' && /^basic\s/i.test(header)) {
      return await this.limited('basic', request.ip, basicUsername(header), async () => await this.fromBasic(request, reply))
    }
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
      return { failure: AuthFailure.credentialsRequired, noCredentials: true }
    }
    return await this.verifyInBand(token, request.ip)
  }

  /** The in-band `auth` message: a JWT from an open socket, under the same limits and counters as at the upgrade. */
  async verifyInBand (token: string, ip: string): Promise<Identity> {
    return await this.limited('jwt', ip, null, async () => await this.verifyToken(token))
  }

  /** Checks a JWT, without the attempt limits (those are for `identify` and `verifyInBand`). */
  async verifyToken (token: string): Promise<Identity> {
    if (this.jwt === null) return { failure: AuthFailure.notConfigured }
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
      return { failure: String((err as { code?: string }).code ?? AuthFailure.invalidToken) }
    }
  }

  private principalOf (payload: Record<string, unknown>): Identity {
    const jwt = this.auth.jwt!
    const userId = claim(payload, jwt.userIdClaim)
    if (typeof userId !== 'string' && typeof userId !== 'number') return { failure: AuthFailure.noUserId }
    const rawRoles = claim(payload, jwt.rolesClaim)
    const roles = (Array.isArray(rawRoles) ? rawRoles : rawRoles === undefined ? [] : [rawRoles]).filter((r): r is string => typeof r === 'string')
    const exp = typeof payload.exp === 'number' ? payload.exp * 1000 : null
    const tenant = jwt.tenantClaim === undefined ? undefined : claim(payload, jwt.tenantClaim)
    const tenantId = typeof tenant === 'string' || typeof tenant === 'number' ? String(tenant) : null
    return { principal: { kind: 'user', userId: String(userId), roles, tenantId, expiresAt: exp } }
  }

  /** null: turned away unchecked, too many password checks are waiting already. */
  private async fromBasic (request: FastifyRequest, reply: FastifyReply): Promise<Identity | null> {
    if (this.basic === null) return { failure: AuthFailure.notConfigured }
    if (!await this.passwordChecks.acquire()) return null
    try {
      const basic = this.basic
      const err = await new Promise<Error | undefined>((resolve) => basic(request, reply, resolve))
      const principal = this.accountOf.get(request)
      if (err !== undefined || principal === undefined) return { failure: AuthFailure.badCredentials }
      return { principal }
    } finally {
      this.passwordChecks.release()
    }
  }

  private async jwksKey (header: Record<string, unknown>): Promise<string> {
    const kid = typeof header.kid === 'string' ? header.kid : undefined
    const alg = typeof header.alg === 'string' ? header.alg : undefined
    if (kid === undefined || alg === undefined) throw Object.assign(new Error(JwksFailure.noKeyId), { code: JwksFailure.noKeyId })
    return await this.keySet!.key(kid, alg)
  }

  /**
   * Counts the attempt and holds its place in the limiter while `check` runs (the SignInLimiter says who is
   * refused unchecked). `check` returns null when it turned the attempt away without checking.
   */
  private async limited (method: Method, ip: string, account: string | null, check: () => Promise<Identity | null>): Promise<Identity> {
    this.counters.attempts[method]++
    const reservation = this.limiter.reserve(ip, account)
    let identity: Identity | null = null
    if (reservation !== null) {
      let failed = true
      try {
        identity = await check()
        failed = identity !== null && 'failure' in identity
      } finally {
        reservation.settle(failed)
      }
    }
    if (identity === null) {
      this.counters.failures[method]++
      return { failure: AuthFailure.tooManyAttempts }
    }
    if ('failure' in identity) {
      this.counters.failures[method]++
      this.log.info({ method, reason: identity.failure }, 'changefeed: authentication failed')
    }
    return identity
  }
}
