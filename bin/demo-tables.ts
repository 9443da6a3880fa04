/**
 * The demo's database, shaped as Marten writes it: document tables (Team, Fixture, RugbyGameState, Player) and the
 * part of Marten's event store an append touches (mt_streams, mt_events, mt_events_sequence; the DDL is Marten's,
 * transcribed in test/fixtures/marten/events.ts, single tenancy, string stream ids), with the teams, the fixture
 * and both squads.
 */
import type { Database } from '../lib/capture/database.js'

/** A Marten document table: id, data jsonb, mt_last_modified, mt_version, mt_dotnet_type, soft-delete columns. */
export const martenTableSql = (table: string, idType = 'varchar'): string => `
  CREATE TABLE IF NOT EXISTS ${table} (
    id               ${idType} PRIMARY KEY,
    data             jsonb NOT NULL,
    mt_last_modified timestamptz DEFAULT transaction_timestamp(),
    mt_version       uuid NOT NULL DEFAULT gen_random_uuid(),
    mt_dotnet_type   varchar,
    mt_deleted       boolean DEFAULT false,
    mt_deleted_at    timestamptz NULL
  )`

/**
 * Marten's event store tables (`Events.StreamIdentity = AsString`), without the progression table and the functions
 * the demo does not call. Marten always writes mt_events.timestamp; its default (a constant, see the fixture) is left out.
 */
const EVENT_STORE_SQL = [`
  CREATE TABLE IF NOT EXISTS mt_streams (
    id               varchar,
    type             varchar,
    version          bigint,
    timestamp        timestamptz NOT NULL DEFAULT (now()),
    snapshot         jsonb,
    snapshot_version integer,
    created          timestamptz NOT NULL DEFAULT (now()),
    tenant_id        varchar DEFAULT '*DEFAULT*',
    is_archived      bool DEFAULT FALSE,
    CONSTRAINT pkey_mt_streams_id PRIMARY KEY (id)
  )`, `
  CREATE TABLE IF NOT EXISTS mt_events (
    seq_id           bigint,
    id               uuid NOT NULL,
    stream_id        varchar CONSTRAINT fkey_mt_events_stream_id REFERENCES mt_streams (id) ON DELETE CASCADE,
    version          bigint NOT NULL,
    data             jsonb NOT NULL,
    type             varchar(500) NOT NULL,
    timestamp        timestamptz NOT NULL,
    tenant_id        varchar DEFAULT '*DEFAULT*',
    mt_dotnet_type   varchar,
    is_archived      bool DEFAULT FALSE,
    CONSTRAINT pkey_mt_events_seq_id PRIMARY KEY (seq_id)
  )`,
'CREATE UNIQUE INDEX IF NOT EXISTS pk_mt_events_stream_and_version ON mt_events USING btree (stream_id, version)',
'CREATE SEQUENCE IF NOT EXISTS mt_events_sequence OWNED BY mt_events.seq_id'
]

export interface Player {
  id: string
  teamId: string
  name: string
  number: number
  position: string
  /** on the field now; the replacements (16–18) start on the bench */
  onField: boolean
  /** has left the field for a replacement (and may not come back) */
  replaced: boolean
  stats: { tries: number, tackles: number, metres: number }
}

const POSITIONS = ['Prop', 'Hooker', 'Prop', 'Lock', 'Lock', 'Flanker', 'Flanker', 'Number 8', 'Scrum-half', 'Fly-half',
  'Wing', 'Centre', 'Centre', 'Wing', 'Fullback', 'Hooker', 'Prop', 'Back']

export const TEAMS = [
  {
    id: 'team-1',
    name: 'Harbour Sharks',
    players: ['A. Tane', 'B. Moana', 'C. Rewi'],
    squad: ['R. Kereama', 'T. Ngata', 'S. Falaniko', 'J. Whitelock', 'M. Parata', 'H. Tuipulotu', 'L. Reihana', 'K. Solomona',
      'A. Tane', 'B. Moana', 'C. Rewi', 'D. Ioane', 'F. Laumape', 'N. Hetaraka', 'P. Wihongi', 'E. Tamaki', 'G. Aumua', 'W. Horomona']
  },
  {
    id: 'team-2',
    name: 'Valley Rams',
    players: ['D. Hughes', 'E. Price'],
    squad: ['O. Jenkins', 'G. Thomas', 'R. Lewis', 'A. Beard', 'C. Rowlands', 'T. Basham', 'J. Tipuric', 'M. Morgan',
      'D. Hughes', 'E. Price', 'L. Adams', 'N. Tompkins', 'I. Halfpenny', 'F. North', 'S. Williams', 'B. Elias', 'H. Carre', 'Y. Evans']
  }
] as const

/** Both squads as they take the field: 1–15 on, 16–18 on the bench, no statistics yet. */
export function startingSquads (): Player[] {
  return TEAMS.flatMap((team, t) => team.squad.map((name, i) => ({
    id: `player-${t + 1}-${String(i + 1).padStart(2, '0')}`,
    teamId: team.id,
    name,
    number: i + 1,
    position: POSITIONS[i],
    onField: i < 15,
    replaced: false,
    stats: { tries: 0, tackles: 0, metres: 0 }
  })))
}

const insertDocument = async <T extends { id: string }>(db: Database, table: string, dotnetType: string, document: T): Promise<void> => {
  await db.query(`INSERT INTO ${table} (id, data, mt_dotnet_type) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING`,
    [document.id, JSON.stringify(document), dotnetType])
}

/** Creates what is missing; a database that has the demo already keeps its data. */
export async function createTables (db: Database): Promise<void> {
  for (const table of ['mt_doc_team', 'mt_doc_fixture', 'mt_doc_rugbygamestate', 'mt_doc_player']) await db.query(martenTableSql(table))
  for (const statement of EVENT_STORE_SQL) await db.query(statement)
  for (const { id, name, players } of TEAMS) await insertDocument(db, 'mt_doc_team', 'Demo.Team', { id, name, players })
  await insertDocument(db, 'mt_doc_fixture', 'Demo.Fixture',
    { id: 'fixture-1', matchId: 'match-1', homeTeamId: 'team-1', awayTeamId: 'team-2', venue: 'North Oval', status: 'live' })
  for (const player of startingSquads()) await insertDocument(db, 'mt_doc_player', 'Demo.Player', player)
}
