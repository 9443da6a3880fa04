/**
 * The writers of a chaos run: four connections, entity i belongs to writer i % 4, each change its own
 * transaction that moves the entity's counter n from n - 1 to n. The statement is idempotent, so a change whose
 * commit outcome is unknown (the connection broke around the COMMIT, PostgreSQL was restarting) is simply sent
 * again on a new connection: 0 rows means it had committed.
 */
import pg from 'pg'

export const WRITERS = 4

const CHANGE = `UPDATE mt_doc_item SET data = jsonb_build_object('id', id, 'n', $2::int), mt_version = gen_random_uuid()
  WHERE id = $1 AND (data->>'n')::int = $2 - 1`

export interface WriteProgress {
  /** changes committed so far */
  committed: number
  /** commit time (ms since epoch) per `<entity>#<n>` */
  commitAt: Map<string, number>
  /** final n per entity */
  finalN: Map<string, number>
  /** statements that failed and were retried */
  retries: number
  /** changes found committed by their retry: the first attempt committed but its answer was lost */
  unknownOutcome: number
  lastCommitAt: number
}

export interface WriteOptions {
  url: string
  entityIds: string[]
  changes: number
  /** changes per second across all writers (0: as fast as they go) */
  ratePerSecond: number
  log: (line: string) => void
}

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

export async function write (options: WriteOptions, progress: WriteProgress): Promise<void> {
  const started = Date.now()
  let issued = 0
  /** the slot of the next change, or -1 when all are issued; paced to ratePerSecond */
  const take = async (): Promise<number> => {
    if (issued >= options.changes) return -1
    const slot = issued++
    if (options.ratePerSecond > 0) {
      const due = started + (slot * 1000) / options.ratePerSecond
      if (due > Date.now()) await sleep(due - Date.now())
    }
    return slot
  }
  await Promise.all(Array.from({ length: WRITERS }, async (_, w) => {
    const mine = options.entityIds.filter((_, i) => i % WRITERS === w)
    if (mine.length === 0) return
    const writer = new Writer(options.url, options.log, w)
    try {
      for (let turn = 0; await take() >= 0; turn++) {
        const id = mine[turn % mine.length]
        const n = (progress.finalN.get(id) ?? 0) + 1
        const outcome = await writer.change(id, n, progress)
        progress.committed++
        progress.finalN.set(id, n)
        progress.commitAt.set(`${id}#${n}`, outcome.at)
        progress.lastCommitAt = outcome.at
      }
    } finally {
      await writer.close()
    }
  }))
}

class Writer {
  private client: pg.Client | null = null

  constructor (private readonly url: string, private readonly log: (line: string) => void, private readonly index: number) {}

  /** Commits change n of `id`, retrying until it is known to be committed. `at`: when it committed. */
  async change (id: string, n: number, progress: WriteProgress): Promise<{ at: number }> {
    /** when an attempt whose outcome is unknown was sent: the change may have committed from then on */
    let uncertainSince: number | null = null
    for (let attempt = 0; ; attempt++) {
      const sent = Date.now()
      try {
        const client = await this.connect()
        const result = await client.query(CHANGE, [id, n])
        if (result.rowCount === 1) return { at: Date.now() }
        const { rows: [row] } = await client.query<{ n: number }>("SELECT (data->>'n')::int AS n FROM mt_doc_item WHERE id = $1", [id])
        if (uncertainSince === null || row === undefined || row.n < n) {
          throw new Error(`change ${id}#${n} matched no row and the document is at n = ${String(row?.n)}`)
        }
        progress.unknownOutcome++
        return { at: uncertainSince }
      } catch (err) {
        if ((err as Error).message.startsWith(`change ${id}#`)) throw err
        progress.retries++
        uncertainSince ??= sent
        if (attempt % 20 === 0) this.log(`writer ${this.index}: ${(err as Error).message}; retrying ${id}#${n}`)
        await this.drop()
        await sleep(50 + Math.random() * 150)
      }
    }
  }

  private async connect (): Promise<pg.Client> {
    if (this.client !== null) return this.client
    const client = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: 3000, query_timeout: 10_000 })
    // a broken connection also emits 'error' on the client; the failing query reports it
    client.on('error', () => {})
    try {
      await client.connect()
    } catch (err) {
      await client.end().catch(() => {})
      throw err
    }
    this.client = client
    return client
  }

  private async drop (): Promise<void> {
    const client = this.client
    this.client = null
    await client?.end().catch(() => {})
  }

  async close (): Promise<void> {
    await this.drop()
  }
}
