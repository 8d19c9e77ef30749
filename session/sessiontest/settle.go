package sessiontest

import (
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// Resign recomputes m's root from its (possibly tampered) parts and replaces
// its signatures with fresh ones from the given slots: the settlement a
// colluding quorum would produce.
func (f *Fixture) Resign(m *sessionpb.Settlement, slots ...uint32) *sessionpb.Settlement {
	root := session.SettlementRoot(m)
	m.StateRoot = root[:]
	m.Signatures = nil
	for _, slot := range slots {
		ss, err := session.SignState(f.SlotKey(slot), f.Snapshot.ChainId, m.EscrowId, m.Nonce, m.StateRoot, slot)
		if err != nil {
			panic(err)
		}
		m.Signatures = append(m.Signatures, &sessionpb.SlotSignature{Slot: slot, Sig: ss.Sig})
	}
	return m
}
