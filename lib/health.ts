/**
 * Operational endpoints: `<healthPath>/live` (the process answers), `<healthPath>/ready` (ready only while the bus
 * works and every database has a working listener: leading, or following another instance that leads), and an
 * admin-only statistics endpoint.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Authenticator } from './auth/authenticate.js'
import { requestLogSerializer } from './auth/redact.js'
import type { AccessPolicy } from './auth/policy.js'
import type { ListenerConnection } from './capture/listener.js'
import type { PubSub } from './bus/index.js'
import type { ResolvedOptions } from './options.js'
import { InvalidOptionsError, RouteTakenError } from './errors.js'

export interface HealthReport {
  ready: boolean
  bus: { provider: string, ready: boolean }
  databases: Record<string, { state: string, leader: boolean }>
}

export function healthOf (bus: PubSub, listeners: ReadonlyMap<string, ListenerConnection>): HealthReport {
  const databases: HealthReport['databases'] = {}
  let ready = bus.ready
  for (const [name, listener] of listeners) {
    databases[name] = { state: listener.state, leader: listener.isLeader }
    if (listener.state !== 'listening' && listener.state !== 'following') ready = false
  }
  return { ready, bus: { provider: bus.provider, ready: bus.ready }, databases }
}

export interface OperationalServices {
  options: ResolvedOptions
  health: () => HealthReport
  stats: () => Promise<unknown>
  authenticator: Authenticator
  policy: AccessPolicy
}

/**
 * Every GET route the plugin will add, with the option that names it: the socket route, and the health and
 * statistics routes when turned on (a mounted plugin adds only the socket route unless told).
 */
export function pluginRoutes (options: ResolvedOptions): Array<{ option: string, path: string }> {
  const { healthPath, statsPath } = options.telemetry
  const routes = [{ option: 'server.path', path: options.server.path }]
  if (healthPath !== null) routes.push({ option: 'telemetry.healthPath', path: `${healthPath}/live` }, { option: 'telemetry.healthPath', path: `${healthPath}/ready` })
  if (statsPath !== null) routes.push({ option: 'telemetry.statsPath', path: statsPath })
  return routes
}

/**
 * Refuses, before anything is opened, a route the host already has: Fastify would otherwise stop the start with
 * FST_ERR_DUPLICATED_ROUTE, which names neither the plugin nor the option that moves the route.
 */
export function checkRoutesFree (fastify: FastifyInstance, options: ResolvedOptions): void {
  const pointer = (name: string): string => '/' + name.replace('.', '/')
  const seen = new Map<string, string>()
  for (const { option, path } of pluginRoutes(options)) {
    const other = seen.get(path)
    if (other !== undefined) throw new InvalidOptionsError(`${pointer(option)} and ${pointer(other)} both make GET ${path}`)
    seen.set(path, option)
    if (fastify.hasRoute({ method: 'GET', url: path })) throw new RouteTakenError(option, path)
  }
}

/**
 * The admin check of the operational routes: resolves true for a request with admin credentials (Basic, Bearer or
 * `?token=`, as for the socket); otherwise answers 401 (none, or refused) or 403 (not an admin) and resolves false.
 */
export function adminCheck ({ authenticator, policy }: Pick<OperationalServices, 'authenticator' | 'policy'>): (request: FastifyRequest, reply: FastifyReply) => Promise<boolean> {
  return async (request, reply) => {
    const identity = await authenticator.identify(request, reply)
    if ('failure' in identity || identity.principal.kind === 'anonymous') {
      await reply.code(401).send({ code: 'unauthenticated', error: 'admin credentials required' })
      return false
    }
    if (!policy.isAdmin(identity.principal)) {
      await reply.code(403).send({ code: 'forbidden', error: 'an admin role is required' })
      return false
    }
    return true
  }
}

export async function registerOperationalRoutes (fastify: FastifyInstance, services: OperationalServices): Promise<void> {
  const { healthPath, statsPath } = services.options.telemetry
  // the stats endpoint takes `?token=` like the socket route does; no route logs one
  const logged = { logSerializers: { req: requestLogSerializer } }
  if (healthPath !== null) {
    fastify.get(`${healthPath}/live`, logged, async () => ({ status: 'ok' }))
    fastify.get(`${healthPath}/ready`, logged, async (_request, reply) => {
      const report = services.health()
      return await reply.code(report.ready ? 200 : 503).send(report)
    })
  }
  if (statsPath !== null) {
    const isAdmin = adminCheck(services)
    fastify.get(statsPath, logged, async (request, reply) => await isAdmin(request, reply) ? await services.stats() : reply)
  }
}
