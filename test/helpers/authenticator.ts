/** An Authenticator of its own in a bare Fastify app (closed at teardown): sign-in logic without sockets. */
import Fastify, { type FastifyInstance } from 'fastify'
import { Authenticator } from '../../lib/auth/authenticate.js'
import type { JwksKeySetOptions } from '../../lib/auth/jwks.js'
import { resolveOptions } from '../../lib/options.js'

interface Teardown { teardown(fn: () => unknown): void }

/** `GET /who` answers with the Identity that `identify` finds; `jwks` passes a fake clock or fetch. */
export async function standaloneAuthenticator (t: Teardown, auth: object, jwks: JwksKeySetOptions = {}): Promise<{ authenticator: Authenticator, app: FastifyInstance }> {
  const options = resolveOptions({ auth })
  const app = Fastify()
  const authenticator = new Authenticator(options.auth, app.log, options.limits.maxAuthFailuresPerMinute, jwks)
  await app.register(async (scope) => {
    await authenticator.register(scope)
    scope.get('/who', async (request, reply) => await authenticator.identify(request, reply))
  })
  await app.ready()
  t.teardown(async () => await app.close())
  return { authenticator, app }
}
