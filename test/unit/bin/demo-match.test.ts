/**
 * The demo's simulated match (bin/demo-match.ts) without a database, over whole matches with a seeded random: the
 * score and the team statistics are what the events and the players' statistics say, fifteen players of each team
 * are on the field at every minute, a replaced player never comes back, and after full time a new match kicks off
 * on an event stream of its own.
 */
import t from 'tap'
import { kickOff, playMinute, type GameState } from '../../../bin/demo-match.js'
import type { Player } from '../../../bin/demo-tables.js'

/** mulberry32: a small seeded generator, so that a failure can be played again */
function seeded (seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const POINTS: Record<string, number> = { try_scored: 5, conversion_kicked: 2, penalty_goal_kicked: 3 }

t.test('whole matches keep the score, the statistics and the line-ups consistent', async (t) => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const random = seeded(seed)
    const start = kickOff()
    let game: GameState = start.game
    const squad = new Map<string, Player>(start.players.map((p) => [p.id, p]))
    const points = { home: 0, away: 0 }
    const types = new Set<string>()
    let substitutions = 0
    while (game.period !== 'Full Time') {
      const minute = playMinute(game, squad, random)
      for (const p of minute.players) squad.set(p.id, p)
      for (const { type, data } of minute.events) {
        types.add(type)
        points[data.teamId === game.homeTeamId ? 'home' : 'away'] += POINTS[type] ?? 0
        if (type === 'player_substituted') {
          substitutions++
          t.equal(squad.get(data.playerId ?? '')?.onField, true, 'the replacement is on')
          t.match(squad.get(String(data.replacedId)), { onField: false, replaced: true }, 'the replaced player is off for good')
        }
      }
      game = minute.game
      for (const teamId of [game.homeTeamId, game.awayTeamId]) {
        t.equal([...squad.values()].filter((p) => p.teamId === teamId && p.onField).length, 15, `15 on the field at ${game.minute}'`)
      }
    }
    t.equal(game.minute, 80, `seed ${seed}: full time at 80'`)
    t.same([game.homeScore, game.awayScore], [points.home, points.away], 'the score is the events\' points')
    t.ok(types.has('half_time') && types.has('full_time'), 'half time and full time are events')
    t.ok(substitutions <= 6, 'at most three replacements a team')
    for (const side of ['home', 'away'] as const) {
      const players = [...squad.values()].filter((p) => p.teamId === (side === 'home' ? game.homeTeamId : game.awayTeamId))
      t.equal(game.stats[side].tackles, players.reduce((n, p) => n + p.stats.tackles, 0), `${side} tackles add up`)
      t.equal(game.stats[side].metres, players.reduce((n, p) => n + p.stats.metres, 0), `${side} metres add up`)
      t.equal(game.stats[side].tries, players.reduce((n, p) => n + p.stats.tries, 0), `${side} tries add up`)
    }
    t.equal(game.streamId, start.game.streamId, 'a match keeps its stream to the end')
    const next = playMinute(game, squad, random)
    t.match(next.game, { minute: 0, period: 'First Half', homeScore: 0, awayScore: 0 }, 'a new match kicks off')
    t.equal(next.game.id, game.id, 'on the same game document')
    t.ok(typeof next.game.streamId === 'string' && next.game.streamId !== game.streamId, `on a stream of its own (${next.game.streamId})`)
    t.not(playMinute(next.game, squad, random).game.streamId, game.streamId, 'and goes on there')
    t.same(next.events.map((e) => e.type), ['kick_off'])
    t.equal(next.players.filter((p) => p.onField).length, 30, 'with the starting fifteens')
  }
})
