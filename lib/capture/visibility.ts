/**
 * Which transactions a PostgreSQL snapshot (`pg_current_snapshot()`, 'xmin:xmax:xip,…') saw as over. A snapshot
 * read with a state tells which later notifications that state already holds (lib/reads/snapshot.ts); one taken by the
 * listener tells which signed NOTIFYs could no longer reach it legitimately (lib/capture/signature.ts).
 */
export class Visibility {
  private readonly xmin: bigint
  private readonly xmax: bigint
  private readonly inProgress: Set<bigint>

  constructor (snapshot: string) {
    const [xmin, xmax, xip] = snapshot.split(':')
    this.xmin = BigInt(xmin)
    this.xmax = BigInt(xmax)
    this.inProgress = new Set(xip === undefined || xip === '' ? [] : xip.split(',').map(BigInt))
  }

  /** Whether the transaction was over (committed, or rolled back) when the snapshot was taken. */
  saw (txid: string | undefined): boolean {
    if (txid === undefined || !/^\d{1,20}$/.test(txid)) return false
    const x = BigInt(txid)
    return x < this.xmin || (x < this.xmax && !this.inProgress.has(x))
  }
}
