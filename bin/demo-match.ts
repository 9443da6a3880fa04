/**
 * The demo's simulated match, a minute of play per tick: the clock moves, players tackle and carry, and now and
 * then a team scores, a player is carded or replaced. A minute is written as Marten writes one with an inline
 * projection: its events appended to the match's stream (mt_streams, mt_events), the RugbyGameState projection and
 * the changed Player documents, in one transaction.
 */
import type { Database } from '../lib/capture/database.js'
import { startingSquads, type Player } from './demo-tables.js'

export interface GameState {
  id: string
  /** the match being played on this document: 1, then 2 after the first one's full time… */
  round: number
  /** the event stream of this match: every match has its own (`match-1`, then `match-1-2`…) */
  streamId: string
  homeTeamId: string
  awayTeamId: string
  homeScore: number
  awayScore: number
  minute: number
  period: 'First Half' | 'Second Half' | 'Full Time'
  lastEvent: string | null
  venue: string
  referee: string
  /** the home team's share of possession, in percent */
  possession: number
  stats: { home: TeamStats, away: TeamStats }
}

export interface TeamStats { tries: number, conversions: number, penaltyGoals: number, cards: number, tackles: number, metres: number }

const NO_STATS: TeamStats = { tries: 0, conversions: 0, penaltyGoals: 0, cards: 0, tackles: 0, metres: 0 }

/** An event of the match's stream: Marten's alias of the event type (`try_scored`) and its data. */
export interface MatchEvent {
  type: string
  data: { minute: number, teamId?: string, playerId?: string, player?: string, [more: string]: unknown }
}

export interface Minute {
  game: GameState
  events: MatchEvent[]
  /** the players whose document changed */
  players: Player[]
}

/** The stream of match events: `mt_streams.type`, matched to the `Match` entity type. */
const MATCH_STREAM_TYPE = 'match'

/** The kick-off of match `round` on game document `id`, on a stream of its own. */
export function kickOff (id = 'match-1', round = 1): Minute {
  const game: GameState = {
    id,
    round,
    streamId: round === 1 ? id : `${id}-${round}`,
    homeTeamId: 'team-1',
    awayTeamId: 'team-2',
    homeScore: 0,
    awayScore: 0,
    minute: 0,
    period: 'First Half',
    lastEvent: 'Kick-off',
    venue: 'North Oval',
    referee: 'M. Raynal',
    possession: 50,
    stats: { home: NO_STATS, away: NO_STATS }
  }
  return { game, events: [{ type: 'kick_off', data: { minute: 0 } }], players: startingSquads() }
}

const POINTS: Record<string, number> = { try_scored: 5, conversion_kicked: 2, penalty_goal_kicked: 3 }
const LABELS: Record<string, string> = { try_scored: 'Try', conversion_kicked: 'Conversion', penalty_goal_kicked: 'Penalty goal' }
const COUNTED: Record<string, keyof TeamStats> = { try_scored: 'tries', conversion_kicked: 'conversions', penalty_goal_kicked: 'penaltyGoals', yellow_card: 'cards' }

/**
 * One simulated minute of play from `game` with `squad` (every player by id). After full time a new match starts,
 * on a new stream: its timeline starts empty.
 */
export function playMinute (game: GameState, squad: ReadonlyMap<string, Player>, random: () => number = Math.random): Minute {
  if (game.period === 'Full Time') return kickOff(game.id, (game.round ?? 1) + 1)
  const minute = game.minute + 1
  const next: GameState = {
    ...game,
    minute,
    period: minute >= 80 ? 'Full Time' : minute > 40 ? 'Second Half' : 'First Half',
    lastEvent: null,
    possession: Math.min(70, Math.max(30, (game.possession ?? 50) + Math.round((random() - 0.5) * 4)))
  }
  const events: MatchEvent[] = []
  const changed = new Map<string, Player>()
  const current = (p: Player): Player => changed.get(p.id) ?? p
  const onField = (teamId: string): Player[] => [...squad.values()].map(current).filter((p) => p.teamId === teamId && p.onField)
  const pick = <T>(list: T[]): T => list[Math.floor(random() * list.length)]
  const change = (p: Player, stats: Partial<Player['stats']>, status: Partial<Pick<Player, 'onField' | 'replaced'>> = {}): Player => {
    const was = current(p)
    const now: Player = { ...was, ...status, stats: { ...was.stats } }
    for (const [k, v] of Object.entries(stats) as Array<[keyof Player['stats'], number]>) now.stats[k] += v
    changed.set(p.id, now)
    return now
  }
  const teams = [game.homeTeamId, game.awayTeamId]
  const attacking = random() * 100 < next.possession ? game.homeTeamId : game.awayTeamId
  const defending = attacking === game.homeTeamId ? game.awayTeamId : game.homeTeamId
  const said = (type: string, p?: Player, more: Record<string, unknown> = {}): void => {
    events.push({ type, data: { minute, ...(p === undefined ? {} : { teamId: p.teamId, playerId: p.id, player: p.name }), ...more } })
  }

  // the work of every minute: tackles made, metres carried
  for (let i = 0; i < 2; i++) change(pick(onField(defending)), { tackles: 1 })
  change(pick(onField(attacking)), { metres: 1 + Math.floor(random() * 15) })

  const kicker = (teamId: string): Player => onField(teamId).find((p) => p.number === 10) ?? pick(onField(teamId))
  const roll = random()
  if (roll < 0.1) {
    said('try_scored', change(pick(onField(attacking)), { tries: 1, metres: 5 + Math.floor(random() * 35) }))
    if (random() < 0.7) said('conversion_kicked', kicker(attacking))
  } else if (roll < 0.18) {
    said('penalty_goal_kicked', kicker(attacking))
  } else if (roll < 0.2) {
    said('yellow_card', pick(onField(defending)))
  }
  if (minute > 45 && minute < 78 && random() < 0.1) {
    const teamId = pick(teams)
    const bench = [...squad.values()].map(current).filter((p) => p.teamId === teamId && !p.onField && !p.replaced)
    if (bench.length > 0) {
      const off = change(pick(onField(teamId).filter((p) => p.number <= 15)), {}, { onField: false, replaced: true })
      const on = change(pick(bench), {}, { onField: true })
      said('player_substituted', on, { replacedId: off.id, replaced: off.name })
    }
  }
  if (minute === 40) said('half_time')
  if (minute === 80) said('full_time')

  const stats = { home: { ...NO_STATS, ...game.stats?.home }, away: { ...NO_STATS, ...game.stats?.away } }
  const sideOf = (teamId: string | undefined): 'home' | 'away' => teamId === game.homeTeamId ? 'home' : 'away'
  for (const p of changed.values()) {
    const was = squad.get(p.id)
    if (was === undefined) continue
    stats[sideOf(p.teamId)].tackles += p.stats.tackles - was.stats.tackles
    stats[sideOf(p.teamId)].metres += p.stats.metres - was.stats.metres
  }
  for (const { type, data } of events) {
    if (COUNTED[type] !== undefined) stats[sideOf(data.teamId)][COUNTED[type]]++
    const points = POINTS[type] ?? 0
    if (points === 0) continue
    if (sideOf(data.teamId) === 'home') next.homeScore += points
    else next.awayScore += points
    next.lastEvent = `${LABELS[type]} (${sideOf(data.teamId)})`
  }
  next.stats = stats
  return { game: next, events, players: [...changed.values()] }
}

/** The .NET type Marten records beside an event's alias: `try_scored` → `Demo.Events.TryScored, Demo`. */
const dotnetTypeOf = (alias: string): string => `Demo.Events.${alias.replace(/(^|_)([a-z])/g, (_m, _s: string, c: string) => c.toUpperCase())}, Demo`

/** The stream a game's events go to: its own, or (a game written before matches had their own) the game's id. */
export const streamOf = (game: { id: string, streamId?: string }): string => game.streamId ?? game.id

/**
 * Writes a minute in one statement (so one transaction on a pool too): the events appended to the match's stream
 * as Marten's rich append writes them (the stream row created or its version raised, one mt_events row per event),
 * the RugbyGameState document upserted, the changed players' documents updated.
 */
export async function writeMinute (db: Database, { game, events, players }: Minute): Promise<void> {
  await db.query(`
    WITH game AS (
      INSERT INTO mt_doc_rugbygamestate (id, data, mt_dotnet_type) VALUES ($1::varchar, $2::jsonb, 'Demo.RugbyGameState')
      ON CONFLICT (id) DO UPDATE SET data = excluded.data, mt_version = gen_random_uuid(), mt_last_modified = now()
    ), players AS (
      UPDATE mt_doc_player p SET data = x.value, mt_version = gen_random_uuid(), mt_last_modified = now()
      FROM jsonb_array_elements($3::jsonb) x WHERE p.id = x.value->>'id'
    ), stream AS (
      INSERT INTO mt_streams AS s (id, type, version, tenant_id)
      SELECT $6::varchar, $5::varchar, jsonb_array_length($4::jsonb), '*DEFAULT*' WHERE jsonb_array_length($4::jsonb) > 0
      ON CONFLICT (id) DO UPDATE SET version = s.version + excluded.version, timestamp = now()
      RETURNING version
    )
    INSERT INTO mt_events (seq_id, id, stream_id, version, data, type, timestamp, tenant_id, mt_dotnet_type)
    SELECT nextval('mt_events_sequence'), gen_random_uuid(), $6::varchar, stream.version - jsonb_array_length($4::jsonb) + e.n,
           e.value->'data', e.value->>'type', now(), '*DEFAULT*', e.value->>'dotnetType'
    FROM stream, jsonb_array_elements($4::jsonb) WITH ORDINALITY AS e(value, n)`,
  [game.id, JSON.stringify(game), JSON.stringify(players), JSON.stringify(events.map((e) => ({ ...e, dotnetType: dotnetTypeOf(e.type) }))), MATCH_STREAM_TYPE, streamOf(game)])
}

/** The match and the squads as the database has them now (someone may have written to them meanwhile). */
export async function readMatch (db: Database, id: string): Promise<{ game: GameState | undefined, squad: Map<string, Player> }> {
  const [row] = await db.query<{ data: GameState }>('SELECT data FROM mt_doc_rugbygamestate WHERE id = $1', [id])
  const players = await db.query<{ data: Player }>('SELECT data FROM mt_doc_player WHERE NOT coalesce(mt_deleted, false)')
  return { game: row?.data, squad: new Map(players.map(({ data }) => [data.id, data])) }
}
