/**
 * Every error code of the project. Thrown errors are @fastify/error classes with CHANGEFEED_* codes; errors sent
 * to a client over the wire carry a short snake_case code from WireError. Tests assert codes, never message text.
 */
import createError, { type FastifyErrorConstructor } from '@fastify/error'

/** An error class with a CHANGEFEED_* code, as @fastify/error makes them. */
export interface CodedErrorClass<Args extends unknown[] = []> extends FastifyErrorConstructor<{ code: string }, Args> {}

/**
 * Our own name for the class type: the declarations TypeScript would emit otherwise say `createError.…`, a namespace
 * a consumer compiling with `moduleResolution: "bundler"` cannot find.
 */
function coded<Args extends unknown[] = []> (code: string, message: string, statusCode?: number): CodedErrorClass<Args> {
  return createError<Args>(code, message, statusCode)
}

export const InvalidOptionsError = coded<[string]>('CHANGEFEED_INVALID_OPTIONS', 'Invalid changefeed options: %s')
export const ConfigFileError = coded<[string, string]>('CHANGEFEED_CONFIG_FILE', 'Cannot use config file %s: %s')
export const UnknownEntityTypeError = coded<[string]>('CHANGEFEED_UNKNOWN_ENTITY_TYPE', 'Unknown entity type "%s"', 400)
export const InvalidChangeError = coded<[string]>('CHANGEFEED_INVALID_CHANGE', 'Invalid change: %s', 400)
export const AlreadyRegisteredError = coded<[string]>('CHANGEFEED_ALREADY_REGISTERED', '%s')
export const DatabaseUnavailableError = coded<[string, string]>('CHANGEFEED_DATABASE_UNAVAILABLE', 'Database "%s" is unavailable: %s')
export const TriggerInstallError = coded<[string, string]>('CHANGEFEED_TRIGGER_INSTALL', 'Installing triggers in database "%s" failed: %s')
export const BusClosedError = coded('CHANGEFEED_BUS_CLOSED', 'The pub/sub bus is closed')
export const CaptureKeyError = coded<[string, string]>('CHANGEFEED_CAPTURE_KEY',
  'Database "%s": cannot read the capture signing key (changefeed_key): %s. Install sql/changefeed.sql, or grant this role SELECT on changefeed_key')
export const EntityTableError = coded<[string, string]>('CHANGEFEED_ENTITY_TABLE', 'Entity type "%s": %s')
export const DatabaseMismatchError = coded<[string, string, string]>('CHANGEFEED_DATABASE_MISMATCH',
  'Database "%s": the host\'s @fastify/postgres pool of that name is connected to database "%s", not "%s" as its url says')
export const BusUnavailableError = coded<[string, string, string]>('CHANGEFEED_BUS_UNAVAILABLE', 'The %s broker at %s is not reachable: %s')
export const NoDatabaseError = coded('CHANGEFEED_NO_DATABASE',
  'No database configured: set DATABASE_URL or list databases in the config file (a pglite:// url uses the embedded PostgreSQL), or run with --demo')
export const MissingPackageError = coded<[string, string, string]>('CHANGEFEED_MISSING_PACKAGE', '%s needs %s, which is not installed: npm install %s')
export const RouteTakenError = coded<[string, string]>('CHANGEFEED_ROUTE_TAKEN', 'Option %s: the host already has a route GET %s; choose another path')

export { WireError, CloseCode, type WireErrorCode } from './protocol/wire.js'
