/**
 * Filtered feeds' conditions (`where`), with no imports: the server and the client SDK both use this file. A
 * condition holds when the document's value at its path equals the value (JSON equality), or one of the values of
 * an array. Conditions are held in one canonical form, so two clients that ask for the same filter share it, and
 * its subscriptionId names it: `<entityType>:*{…canonical JSON…}` (`<entityType>@<tenant>:*{…}` with a tenant).
 */

export type WhereScalar = string | number | boolean | null
export type Where = Record<string, WhereScalar | WhereScalar[]>

/**
 * What one filter may hold. Each change of a type is matched against its filters on the server, so these bound what
 * one filter costs per change, whoever asked for it: at most `conditions` lookups of at most `depth` steps, each of a
 * value compared by its key in a set (a string longer than `string` can equal none). The schema (messages.ts)
 * refuses more.
 */
export const WHERE_LIMITS = {
  /** conditions of one filter */
  conditions: 8,
  /** values of one condition (any of) */
  values: 100,
  /** segments of a dotted path */
  depth: 5,
  /** characters of a path */
  pathLength: 128,
  /** characters of a string value */
  string: 512
} as const

/** One condition in canonical form: its path split, and the JSON of each value it allows (sorted, distinct). */
export interface Condition {
  path: string
  parts: string[]
  values: string[]
  /** `values`, to look a document's value up in */
  allowed: ReadonlySet<string>
}

/**
 * Significant digits every double holds: a decimal of at most this many is read back as written. More may have been
 * rounded on the way in (the JSON parser), and the value compared would not be the one the client wrote.
 */
const EXACT_DIGITS = 15

/**
 * Whether a number is compared the same by the snapshot read (PostgreSQL's exact numeric, from the number's JSON)
 * and by the live matcher (a JS number parsed from the document): an integer within ±(2^53 − 1), or another number
 * of at most 15 significant digits. `9007199254740993` arrives as 9007199254740992: the read would look for the one
 * and the matcher take documents holding either.
 */
function exactNumber (value: number): boolean {
  if (Number.isInteger(value)) return Number.isSafeInteger(value)
  const [mantissa] = value.toExponential().split('e')
  return mantissa.replace(/[-.]/g, '').length <= EXACT_DIGITS
}

/**
 * Why a filter cannot be held as asked (the server answers `bad_request` with it), or null. The shapes are the
 * schema's (messages.ts); this is what a schema cannot say.
 */
export function whereProblem (where: Where): string | null {
  for (const [path, value] of Object.entries(where)) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (typeof v === 'number' && !exactNumber(v)) {
        return `where ${JSON.stringify(path)}: ${JSON.stringify(v)} is not held exactly by a JS number (integers within ±${Number.MAX_SAFE_INTEGER}, other numbers of at most ${EXACT_DIGITS} significant digits): compare it as a string, and store it as one`
      }
    }
  }
  return null
}

/** The conditions of `where`, sorted by path; each value list sorted and without repeats. */
export function conditionsOf (where: Where): Condition[] {
  return Object.keys(where).sort().map((path) => {
    const value = where[path]
    const allowed = new Set((Array.isArray(value) ? value : [value]).map(jsonKey))
    return { path, parts: path.split('.'), values: [...allowed].sort(), allowed }
  })
}

/** The canonical JSON of a filter: the same for every spelling of the same conditions. */
export function whereKey (where: Where): string {
  const parts = conditionsOf(where).map(({ path, values }) =>
    JSON.stringify(path) + ':' + (values.length === 1 ? values[0] : '[' + values.join(',') + ']'))
  return '{' + parts.join(',') + '}'
}

/** The JSON of a value as equality compares it: numbers by value (1 and 1.0 are one), strings as they are. */
function jsonKey (value: unknown): string {
  return JSON.stringify(value) ?? 'null'
}

/** The value at a path of a document; undefined when any step is missing or not an object. */
export function valueAt (document: unknown, parts: readonly string[]): unknown {
  let value = document
  for (const part of parts) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined
    value = Object.prototype.hasOwnProperty.call(value, part) ? (value as Record<string, unknown>)[part] : undefined
  }
  return value
}

/**
 * The key an index looks a document's value up by: only scalars can equal a condition's value, and no string longer
 * than a condition's may (a large field of the document is not copied to find that out).
 */
export function scalarKey (value: unknown): string | undefined {
  if (value === undefined) return undefined
  if (value !== null && typeof value === 'object') return undefined
  if (typeof value === 'string' && value.length > WHERE_LIMITS.string) return undefined
  return jsonKey(value)
}

/** A document's keys by path, each read once however many conditions of however many filters ask for it. */
export class DocumentKeys {
  private readonly keys = new Map<string, string | undefined>()

  constructor (readonly document: unknown) {}

  at (path: string, parts: readonly string[]): string | undefined {
    if (this.keys.has(path)) return this.keys.get(path)
    const key = scalarKey(valueAt(this.document, parts))
    this.keys.set(path, key)
    return key
  }
}

/** Whether a document (or its keys, read for other filters too) matches every condition. */
export function matches (document: unknown, conditions: readonly Condition[], keys = new DocumentKeys(document)): boolean {
  if (document === null || typeof document !== 'object') return false
  for (const { path, parts, allowed } of conditions) {
    const key = keys.at(path, parts)
    if (key === undefined || !allowed.has(key)) return false
  }
  return true
}

/** The entity id part of a filtered feed's subscriptionId: `*` then the canonical filter. */
export function filterIdOf (where: Where): string {
  return '*' + whereKey(where)
}

/** The filter a subscriptionId's entity id names (`*{…}`), or null when it names none (or not a valid one). */
export function parseFilterId (entityId: string): Where | null {
  if (!entityId.startsWith('*{')) return null
  try {
    const where = JSON.parse(entityId.slice(1)) as unknown
    return where !== null && typeof where === 'object' && !Array.isArray(where) ? where as Where : null
  } catch {
    return null
  }
}

/** A filter as the server holds it and names it back (keys sorted, values sorted and distinct). */
export function canonicalWhere (where: Where): Where {
  return JSON.parse(filterIdOf(where).slice(1)) as Where
}
