/**
 * What a leader records of its publishing in notify mode (lib/bus/handoff.ts keeps it on the broker): a type of its
 * own, so that the capture's public types do not reach a broker client's.
 */
export interface HandoffRecord {
  write(database: string, txid: string): Promise<void>
  /** the last transaction recorded; null when there is none (never written, expired, lost with the broker) */
  read(database: string): Promise<string | null>
}
