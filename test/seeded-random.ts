/**
 * mulberry32: a small seeded generator of numbers in [0, 1), good enough to pick indices, orders
 * and delays. The same seed gives the same draws: a bench run's choices are the next run's, and a
 * failing test's can be replayed. (The bench's, and the tests'.)
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
