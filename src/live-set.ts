/**
 * A set of live objects that logins join and leave (a listener's sessions, an idle sweep's
 * splices, the backend logins under way), kept in an array in which each member holds its own
 * place.
 *
 * Why not a `Set`: V8 grows, compacts and shrinks a Set's (or a Map's) table by copying its live
 * entries into a new table, and leaves them in the old one as they were. Once the table has been
 * through a full collection it is in the old generation, and from then on every new table is made
 * there too. The old table is garbage, but a young-generation collection (a scavenge) takes every
 * reference from the old generation into the young one as a root, dead or not, until the next full
 * collection. So a Set that sessions join and leave keeps every session that was in it at one of
 * its rehashes (every few logins when a few are in flight), with its sockets, buffers and splice,
 * alive through the scavenges and into the old generation, where it waits for a full collection:
 * 0.3 to 1.4 MB moved to the old generation per scavenge instead of 0.02, and a full collection
 * every 5 to 15 scavenges (docs/performance.md, "What a full collection left behind"). A member
 * leaves an array in place (the last member moves into its hole, then the array pops), and is
 * referenced from nowhere once it has left.
 *
 * A member is in at most one LiveSet of a given `place` field; the order of members is not kept.
 */
export class LiveSet<T extends object> {
  private readonly members: T[] = [];

  /**
   * `place`: the member's own numeric field that holds its index here, -1 (or absent) while it is
   * in no such set. Each kind of set has a field of its own, declared on the member's class.
   */
  constructor(private readonly place: PlaceField<T>) {}

  get size(): number {
    return this.members.length;
  }

  add(member: T): void {
    if (this.has(member)) return;
    const places = member as unknown as Record<string, number>;
    places[this.place] = this.members.length;
    this.members.push(member);
  }

  /** Removes `member`; false when it was not here. */
  delete(member: T): boolean {
    const places = member as unknown as Record<string, number>;
    const at = places[this.place];
    if (at === undefined || at < 0 || this.members[at] !== member) return false;
    const last = this.members.pop()!;
    if (last !== member) {
      this.members[at] = last;
      (last as unknown as Record<string, number>)[this.place] = at;
    }
    places[this.place] = -1;
    return true;
  }

  has(member: T): boolean {
    const at = (member as unknown as Record<string, number>)[this.place];
    return at !== undefined && at >= 0 && this.members[at] === member;
  }

  /** The members now, in a new array: what a loop that may add or remove members goes over. */
  toArray(): T[] {
    return this.members.slice();
  }

  /**
   * Calls `visit` for each member, from the last; `visit` may remove the member it is given (and
   * only that one): the one moved into its place has been visited already.
   */
  forEachFromLast(visit: (member: T) => void): void {
    for (let i = this.members.length - 1; i >= 0; i--) visit(this.members[i]!);
  }

  [Symbol.iterator](): IterableIterator<T> {
    return this.toArray()[Symbol.iterator]();
  }
}

/** The name of a member's numeric field that holds its place in a LiveSet. */
export type PlaceField<T> = { [K in keyof T]-?: T[K] extends number ? K : never }[keyof T] & string;
