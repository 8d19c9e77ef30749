package postgres

import (
	"context"
	"regexp"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// layout is the partitioning found in the catalog.
type layout struct {
	parents []string          // tables PARTITION BY RANGE (epoch_id)
	parts   map[string][]part // parent → its partitions with a numeric range
}

type part struct {
	name     string
	from, to int64 // [from, to)
}

// partitions reads, from the catalog, every table of the current schema
// that is PARTITION BY RANGE (epoch_id), with its partitions.
func partitions(ctx context.Context, tx pgx.Tx) (*layout, error) {
	rows, err := tx.Query(ctx, `
		SELECT p.relname, c.relname, pg_get_expr(c.relpartbound, c.oid)
		FROM pg_partitioned_table pt
		JOIN pg_class p ON p.oid = pt.partrelid
		JOIN pg_namespace n ON n.oid = p.relnamespace
		JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum = pt.partattrs[0]
		LEFT JOIN pg_inherits i ON i.inhparent = p.oid
		LEFT JOIN pg_class c ON c.oid = i.inhrelid
		WHERE n.nspname = current_schema()
			AND pt.partstrat = 'r' AND pt.partnatts = 1 AND a.attname = 'epoch_id'
			AND NOT p.relispartition
		ORDER BY p.relname, c.relname`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	l := &layout{parts: map[string][]part{}}
	for rows.Next() {
		var parent string
		var child, bound *string
		if err := rows.Scan(&parent, &child, &bound); err != nil {
			return nil, err
		}
		if len(l.parents) == 0 || l.parents[len(l.parents)-1] != parent {
			l.parents = append(l.parents, parent)
		}
		if child == nil || bound == nil {
			continue
		}
		if from, to, ok := parseRange(*bound); ok {
			l.parts[parent] = append(l.parts[parent], part{name: *child, from: from, to: to})
		}
	}
	return l, rows.Err()
}

var rangeBound = regexp.MustCompile(`^FOR VALUES FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)$`)

// parseRange parses a numeric range partition bound; MINVALUE, MAXVALUE and
// DEFAULT bounds are not ours and do not parse.
func parseRange(bound string) (from, to int64, ok bool) {
	m := rangeBound.FindStringSubmatch(bound)
	if m == nil {
		return 0, 0, false
	}
	from, err1 := strconv.ParseInt(m[1], 10, 64)
	to, err2 := strconv.ParseInt(m[2], 10, 64)
	return from, to, err1 == nil && err2 == nil
}

// covered reports whether parent has a partition holding epoch.
func (l *layout) covered(parent string, epoch uint64) bool {
	e := int64(epoch)
	for _, p := range l.parts[parent] {
		if p.from <= e && e < p.to {
			return true
		}
	}
	return false
}

// within lists the partitions, of every parent, whose range lies within
// epoch.
func (l *layout) within(epoch uint64) []string {
	e := int64(epoch)
	var out []string
	for _, parent := range l.parents {
		for _, p := range l.parts[parent] {
			if p.from >= e && p.to <= e+1 && p.from < p.to {
				out = append(out, p.name)
			}
		}
	}
	return out
}
