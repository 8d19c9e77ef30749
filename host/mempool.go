package host

import (
	"fmt"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// mempool holds signed txs waiting for the gateway to carry them: this
// host's own, and peers' txs it received by gossip.
type mempool struct {
	byKey map[string]*pooled
	order []string // insertion order, for a stable reply
}

type pooled struct {
	tx    *sessionpb.Tx
	since uint64 // the session nonce when the tx entered the pool
	own   bool
}

func newMempool() *mempool { return &mempool{byKey: map[string]*pooled{}} }

// add keeps tx unless an equivalent tx is already pooled.
func (m *mempool) add(tx *sessionpb.Tx, since uint64, own bool) bool {
	key := session.TxKey(tx)
	if _, ok := m.byKey[key]; ok {
		return false
	}
	m.byKey[key] = &pooled{tx: tx, since: since, own: own}
	m.order = append(m.order, key)
	return true
}

func (m *mempool) remove(key string) { delete(m.byKey, key) }

// txs lists the pooled txs in the order they arrived.
func (m *mempool) txs() []*sessionpb.Tx {
	out := make([]*sessionpb.Tx, 0, len(m.byKey))
	live := m.order[:0]
	for _, k := range m.order {
		if p, ok := m.byKey[k]; ok {
			out = append(out, p.tx)
			live = append(live, k)
		}
	}
	m.order = live
	return out
}

// prune drops txs the session can no longer take: their record was sealed,
// or it moved past the status the tx needs.
func (m *mempool) prune(s *session.Session) {
	for k, p := range m.byKey {
		if !s.MayInclude(p.tx) {
			delete(m.byKey, k)
		}
	}
}

// overdue explains why the host must withhold its signature from the state
// at nonce: one of its own txs that still waits there (pending reports
// which do) has waited more than grace nonces for the gateway to include
// it. It returns "" when nothing is overdue.
func (m *mempool) overdue(nonce, grace uint64, pending func(key string, tx *sessionpb.Tx) bool) string {
	for _, k := range m.order {
		p, ok := m.byKey[k]
		if !ok || !p.own || nonce-p.since <= grace || !pending(k, p.tx) {
			continue
		}
		return fmt.Sprintf("withholding signatures: own tx for inference %d (slot %d) has waited %d nonces for inclusion, more than the grace of %d",
			txID(p.tx), p.tx.Slot, nonce-p.since, grace)
	}
	return ""
}

func txID(tx *sessionpb.Tx) uint64 {
	switch b := tx.Body.(type) {
	case *sessionpb.Tx_Confirm:
		return b.Confirm.InferenceId
	case *sessionpb.Tx_Finish:
		return b.Finish.InferenceId
	case *sessionpb.Tx_Validation:
		return b.Validation.InferenceId
	case *sessionpb.Tx_Timeout:
		return b.Timeout.InferenceId
	}
	return 0
}
