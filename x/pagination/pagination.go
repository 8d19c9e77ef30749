// Package pagination pages through a collections Multi index whose primary
// keys are uint64 ids (tasks by type, epochs by state). The SDK's
// CollectionPaginate cannot do this: a Multi index keeps its key set
// unexported.
//
// A page's next_key is the big-endian id of the first entry of the next page,
// so a client passes it back unchanged to continue.
package pagination

import (
	"context"
	"encoding/binary"
	"fmt"

	"cosmossdk.io/collections"
	"cosmossdk.io/collections/indexes"

	"github.com/cosmos/cosmos-sdk/types/query"
)

// DefaultLimit is the page size when the request sets none.
const DefaultLimit = 100

// ByIndex returns one page of the ids that idx maps ref to, in id order.
func ByIndex[R, V any](ctx context.Context, idx *indexes.Multi[R, uint64, V], ref R, req *query.PageRequest) ([]uint64, *query.PageResponse, error) {
	if req == nil {
		req = &query.PageRequest{}
	}
	if len(req.Key) > 0 && req.Offset > 0 {
		return nil, nil, fmt.Errorf("pagination: set either key or offset, not both")
	}
	limit := req.Limit
	if limit == 0 {
		limit = DefaultLimit
	}

	rng := collections.NewPrefixedPairRange[R, uint64](ref)
	if len(req.Key) > 0 {
		if len(req.Key) != 8 {
			return nil, nil, fmt.Errorf("pagination: next_key must be the 8 bytes a previous page returned, got %d bytes", len(req.Key))
		}
		start := binary.BigEndian.Uint64(req.Key)
		if req.Reverse {
			rng = rng.EndInclusive(start)
		} else {
			rng = rng.StartInclusive(start)
		}
	}
	if req.Reverse {
		rng = rng.Descending()
	}

	it, err := idx.Iterate(ctx, rng)
	if err != nil {
		return nil, nil, err
	}
	defer it.Close()

	var (
		ids     []uint64
		skipped uint64
		res     = &query.PageResponse{}
	)
	for ; it.Valid(); it.Next() {
		id, err := it.PrimaryKey()
		if err != nil {
			return nil, nil, err
		}
		if skipped < req.Offset {
			skipped++
			continue
		}
		if uint64(len(ids)) == limit {
			res.NextKey = binary.BigEndian.AppendUint64(nil, id)
			break
		}
		ids = append(ids, id)
	}
	if req.CountTotal && len(req.Key) == 0 {
		total, err := count(ctx, idx, ref)
		if err != nil {
			return nil, nil, err
		}
		res.Total = total
	}
	return ids, res, nil
}

func count[R, V any](ctx context.Context, idx *indexes.Multi[R, uint64, V], ref R) (uint64, error) {
	it, err := idx.MatchExact(ctx, ref)
	if err != nil {
		return 0, err
	}
	defer it.Close()
	var n uint64
	for ; it.Valid(); it.Next() {
		n++
	}
	return n, nil
}
