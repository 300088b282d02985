/**
 * The Executor seam: anything with `query(text, values)` in the shape of `pg`. A caller passes
 * its own Client or PoolClient (inside its transaction) and hark's statements join that
 * transaction, so a job commits or rolls back with the caller's own writes.
 */
export interface QueryResultLike<R> {
  rows: R[];
  rowCount: number | null;
}

export interface Executor {
  // biome-ignore lint/suspicious/noExplicitAny: matches pg's own signature
  query(text: string, values?: any[]): Promise<QueryResultLike<any>>;
}
