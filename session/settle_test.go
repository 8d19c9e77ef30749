package session_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// settled returns a bundle whose session ran a few inferences and closed.
func settled(t *testing.T) *bundle {
	t.Helper()
	b := setup(t)
	for range 4 {
		b.inference(t, 10, 20, 5)
	}
	b.step(t, sessiontest.Finalize())
	b.step(t, sessiontest.Finalize())
	return b
}

func TestVerifySettlementRejections(t *testing.T) {
	t.Parallel()
	all := []uint32{0, 1, 2}
	cases := []struct {
		name      string
		tamper    func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement
		reason    session.Reason
		fragments []string
	}{
		{"missing", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement { return nil }, session.ReasonMalformed, []string{"missing settlement"}},
		{"wrong escrow", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.EscrowId = 9
			return b.f.Resign(m, all...)
		}, session.ReasonEscrow, []string{"settlement of escrow 7 rejected: message names escrow 9"}},
		{"active nonces above nonce", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.ActiveNonces = m.Nonce + 1
			return b.f.Resign(m, all...)
		}, session.ReasonNonce, []string{"active nonces 11 exceed the nonce 10"}},
		{"unknown phase", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.Phase = 9
			return b.f.Resign(m, all...)
		}, session.ReasonMalformed, []string{"unknown phase 9"}},
		{"stats for too few slots", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.HostStats = m.HostStats[:2]
			return m
		}, session.ReasonMalformed, []string{"2 host stats for a group of 3 slots"}},
		{"short records root", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.RecordsRoot = m.RecordsRoot[:3]
			return m
		}, session.ReasonMalformed, []string{"must be 32 bytes"}},
		{"no sealed accumulator", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.Sealed = nil
			return m
		}, session.ReasonMalformed, []string{"sealed accumulator missing"}},
		{"nonce past max with huge active nonces", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.ActiveNonces = 1 << 63
			m.Nonce = 1 << 63
			return m
		}, session.ReasonNonce, []string{"exceeds the escrow's max nonce"}},
		{"costs above the amount", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.HostStats[0].Cost = 20_000_000
			return b.f.Resign(m, all...)
		}, session.ReasonConservation, []string{"exceed the escrow amount 10000000"}},
		{"cost overflow", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.HostStats[0].Cost = 1<<64 - 1
			return b.f.Resign(m, all...)
		}, session.ReasonOverflow, []string{"costs overflow at slot 0"}},
		{"books do not add up", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.Balance++
			return b.f.Resign(m, all...)
		}, session.ReasonConservation, []string{"do not add up to the escrow amount 10000000"}},
		{"more validated than finished", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.HostStats[0].Validated = m.HostStats[0].Finished + 1
			return b.f.Resign(m, all...)
		}, session.ReasonConservation, []string{"slot 0: ", "inferences validated, more than the"}},
		{"more validations than others' finished inferences", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			others := m.HostStats[1].Finished + m.HostStats[1].Invalid + m.HostStats[2].Finished + m.HostStats[2].Invalid
			m.HostStats[0].ValidationsDone = others + 1
			return b.f.Resign(m, all...)
		}, session.ReasonConservation, []string{"slot 0: ", "validations done, more than the"}},
		{"parts do not match the signed root", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.HostStats[0].LastConfirmedAt++
			return m
		}, session.ReasonRoot, []string{"state root mismatch (signed "}},
		{"signature for a slot outside the group", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.Signatures[0].Slot = 3
			return m
		}, session.ReasonMalformed, []string{"signature 0 names no slot of the group of 3"}},
		{"signature by the wrong slot's key", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.Signatures[0].Slot, m.Signatures[1].Slot = m.Signatures[1].Slot, m.Signatures[0].Slot
			return m
		}, session.ReasonQuorum, []string{"1 of 3 slots signed validly", "ignored slot 1: signer", "may not sign devshard/v1/state"}},
		{"signature over another root", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			ss, _ := session.SignState(b.f.SlotKey(0), sessiontest.ChainID, m.EscrowId, m.Nonce, make([]byte, 32), 0)
			m.Signatures[0].Sig = ss.Sig
			return m
		}, session.ReasonQuorum, []string{"ignored slot 0: signature by", "does not verify"}},
		{"too few slots", func(b *bundle, m *sessionpb.Settlement) *sessionpb.Settlement {
			m.Signatures = m.Signatures[:2]
			return m
		}, session.ReasonQuorum, []string{"2 of 3 slots signed validly; more than 2/3 (at least 3) are needed"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := settled(t)
			m := tc.tamper(b, b.f.Settle(b.gw.Replica, all...))
			plan, err := session.VerifySettlement(b.f.Snapshot, m, nil)
			require.Nil(t, plan)
			require.ErrorIs(t, err, tc.reason, "got %v", err)
			var se *session.SettlementError
			require.ErrorAs(t, err, &se)
			for _, f := range tc.fragments {
				require.Contains(t, err.Error(), f)
			}
		})
	}
}

// Fees split equally by slot with the remainder to the lowest slots; the
// plan always adds up to the amount.
func TestPlanSplitsFeesExactly(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) {
		o.CreationFee = 1001
		o.Holders = []int{0, 1, 1, 2}
	})
	b.inference(t, 1, 1, 1)
	m := b.f.Settle(b.gw.Replica, 0, 1, 2, 3)
	plan, err := session.VerifySettlement(b.f.Snapshot, m, nil)
	require.NoError(t, err)
	require.Equal(t, uint64(1007), plan.Fees) // 1001 + 2 × 3
	shares := []uint64{252, 252, 252, 251}
	total := plan.Refund
	for i, p := range plan.Slots {
		require.Equal(t, shares[i], p.FeeShare, "slot %d", i)
		total += p.Total()
	}
	require.Equal(t, plan.Amount, total)
	by := plan.ByAddress()
	require.Len(t, by, 3)
	require.Equal(t, []uint32{1, 2}, by[1].Slots)
	require.Equal(t, uint64(504), by[1].FeeShare)
}

func TestMaySettle(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	gw := f.Gateway.Address()
	host := f.SlotKey(0).Address()
	stranger, err := signing.GenerateKey(sessiontestRand(3))
	require.NoError(t, err)
	final, active := sessionpb.Phase_PHASE_SETTLEMENT, sessionpb.Phase_PHASE_ACTIVE

	require.NoError(t, session.MaySettle(f.Snapshot, gw, final, false, nil), "the creator may settle a finalized session at any time")
	err = session.MaySettle(f.Snapshot, host, final, false, nil)
	require.ErrorIs(t, err, session.ReasonUnauthorized)
	require.ErrorContains(t, err, "only after the settlement deadline")
	require.NoError(t, session.MaySettle(f.Snapshot, host, final, true, nil), "members may once the deadline passed")
	require.NoError(t, session.MaySettle(f.Snapshot, host, active, true, nil), "at any phase")
	err = session.MaySettle(f.Snapshot, stranger.Address(), final, true, nil)
	require.ErrorContains(t, err, "neither the creator nor a group member")
	auth := warmKeys{stranger.Address(): host}
	require.NoError(t, session.MaySettle(f.Snapshot, stranger.Address(), active, true, auth), "a member's warm key")

	// The creator's side settles only SETTLEMENT, before or after the
	// deadline, directly or through its warm key.
	creatorWarm := warmKeys{stranger.Address(): gw}
	for _, phase := range []sessionpb.Phase{sessionpb.Phase_PHASE_ACTIVE, sessionpb.Phase_PHASE_FINALIZING} {
		for _, passed := range []bool{false, true} {
			for _, c := range []struct {
				sender signing.Address
				auth   session.Authorizer
			}{{gw, nil}, {stranger.Address(), creatorWarm}} {
				err := session.MaySettle(f.Snapshot, c.sender, phase, passed, c.auth)
				require.ErrorIs(t, err, session.ReasonPhase, "%s, deadline passed %v", phase, passed)
				require.ErrorContains(t, err, "expected phase PHASE_SETTLEMENT, the settlement is at phase "+phase.String())
			}
		}
	}
	require.NoError(t, session.MaySettle(f.Snapshot, stranger.Address(), final, false, creatorWarm), "the creator's warm key")

	// A creator that also holds a slot is still held to the creator's rule.
	f.Snapshot.Group[0] = gw.Bytes()
	require.ErrorIs(t, session.MaySettle(f.Snapshot, gw, active, true, nil), session.ReasonPhase)
}

func TestValidateSnapshot(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		mutate func(s *sessionpb.EscrowSnapshot)
		want   string
	}{
		{"creator", func(s *sessionpb.EscrowSnapshot) { s.Creator = nil }, "creator must be a 20-byte address, got 0 bytes"},
		{"empty group", func(s *sessionpb.EscrowSnapshot) { s.Group = nil }, "group must have 1 to 256 slots, got 0"},
		{"slot address", func(s *sessionpb.EscrowSnapshot) { s.Group[1] = []byte{1} }, "slot 1 address must be 20 bytes, got 1"},
		{"version", func(s *sessionpb.EscrowSnapshot) { s.ProtocolVersion = 9 }, "protocol version 9 is not supported"},
		{"price", func(s *sessionpb.EscrowSnapshot) { s.TokenPrice = 0 }, "token price must be positive"},
		{"fee above amount", func(s *sessionpb.EscrowSnapshot) { s.CreationFee = s.Amount + 1 }, "creation fee 10000001 exceeds the amount 10000000"},
		{"max nonce", func(s *sessionpb.EscrowSnapshot) { s.MaxNonce = 1 << 32 }, "max nonce must be 1 to 4294967295"},
		{"rate", func(s *sessionpb.EscrowSnapshot) { s.ValidationRateBps = 10001 }, "validation rate must be at most 10000 bps"},
		{"no chain id", func(s *sessionpb.EscrowSnapshot) { s.ChainId = "" }, "chain id must be 1 to 50 bytes, got 0"},
		{"long chain id", func(s *sessionpb.EscrowSnapshot) { s.ChainId = strings.Repeat("c", 51) }, "chain id must be 1 to 50 bytes, got 51"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := sessiontest.New(1, sessiontest.DefaultOptions())
			tc.mutate(f.Snapshot)
			_, err := session.New(f.Snapshot, nil)
			require.ErrorIs(t, err, session.ReasonMalformed)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestRestoreRejectsInconsistentState(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.step(t, sessiontest.Start(1, 10, 10))
	cases := []struct {
		name   string
		mutate func(st *sessionpb.SessionState)
		want   string
	}{
		{"books", func(st *sessionpb.SessionState) { st.Balance++ }, "books do not add up"},
		{"reserved", func(st *sessionpb.SessionState) { st.Live[0].Reserved++ }, "reserved 200 does not match live reservations 201"},
		{"stats", func(st *sessionpb.SessionState) { st.HostStats = st.HostStats[:1] }, "1 host stats for a group of 3"},
		{"executor", func(st *sessionpb.SessionState) { st.Live[0].ExecutorSlot = 2 }, "executor slot 2, expected 1"},
		{"bitmap", func(st *sessionpb.SessionState) { st.Live[0].ValidVotes = nil }, "vote bitmaps must be 1 bytes"},
		{"phase", func(st *sessionpb.SessionState) { st.Phase = 0 }, "unknown phase 0"},
		{"vote padding", func(st *sessionpb.SessionState) { st.Live[0].InvalidVotes[0] = 0x80 }, "bits set past slot 2"},
		{"sealed", func(st *sessionpb.SessionState) { st.Sealed = nil }, "sealed accumulator missing"},
		{"escrow", func(st *sessionpb.SessionState) { st.EscrowId = 1 }, "state is for escrow 1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := b.gw.Replica.State()
			tc.mutate(st)
			_, err := session.Restore(b.f.Snapshot, st, nil)
			require.ErrorIs(t, err, session.ReasonState)
			require.ErrorContains(t, err, tc.want)
		})
	}
	s, err := session.Restore(b.f.Snapshot, b.gw.Replica.State(), nil)
	require.NoError(t, err)
	require.Equal(t, b.gw.Replica.Root(), s.Root())
}

// countingSigner counts the signatures its key makes.
type countingSigner struct {
	*signing.PrivKey
	n int
}

func (c *countingSigner) Sign(msg []byte) ([]byte, error) {
	c.n++
	return c.PrivKey.Sign(msg)
}

func TestSignStateSlotsSignsOnceForEverySlot(t *testing.T) {
	t.Parallel()
	o := sessiontest.DefaultOptions()
	o.Holders = []int{0, 1, 0, 2, 0} // participant 0 holds slots 0, 2 and 4
	f := sessiontest.New(3, o)
	key := &countingSigner{PrivKey: f.Hosts[0]}
	root := sessiontest.Hash("root")
	sigs, err := session.SignStateSlots(key, f.Snapshot.ChainId, f.Snapshot.EscrowId, 9, root, []uint32{0, 2, 4})
	require.NoError(t, err)
	require.Equal(t, 1, key.n, "the signed bytes name no slot: one signature serves every slot")
	require.Len(t, sigs, 3)
	for i, slot := range []uint32{0, 2, 4} {
		require.Equal(t, slot, sigs[i].Slot)
		require.NoError(t, session.VerifyStateSignature(f.Snapshot, sigs[i], nil), "slot %d", slot)
	}
	// Each slot's signature is its own copy: changing one leaves the others.
	sigs[0].Sig.Sig[0] ^= 1
	require.Error(t, session.VerifyStateSignature(f.Snapshot, sigs[0], nil))
	require.NoError(t, session.VerifyStateSignature(f.Snapshot, sigs[1], nil))
	// The same signature does not pass for a slot the key does not hold.
	stolen := *sigs[1]
	stolen.Slot = 1
	require.Error(t, session.VerifyStateSignature(f.Snapshot, &stolen, nil))
}

// Only a root of a higher nonce replaces one pending in its challenge
// window; only a finalized root pays at once.
func TestMaySupersedeAndPaysAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.inference(t, 10, 20, 5)
	early := b.f.Settle(b.gw.Replica, b.f.AllSlots()...)
	b.inference(t, 10, 20, 5)
	later := b.f.Settle(b.gw.Replica, b.f.AllSlots()...)
	b.step(t, sessiontest.Finalize())
	b.step(t, sessiontest.Finalize())
	final := b.f.Settle(b.gw.Replica, b.f.AllSlots()...)

	require.NoError(t, session.MaySupersede(b.f.Snapshot, nil, early), "nothing pending")
	require.NoError(t, session.MaySupersede(b.f.Snapshot, early, later))
	require.NoError(t, session.MaySupersede(b.f.Snapshot, later, final))
	for _, next := range []*sessionpb.Settlement{early, later} {
		err := session.MaySupersede(b.f.Snapshot, later, next)
		require.ErrorIs(t, err, session.ReasonStale)
		var se *session.SettlementError
		require.ErrorAs(t, err, &se)
	}
	require.ErrorContains(t, session.MaySupersede(b.f.Snapshot, later, early),
		"a settlement at nonce 4 is pending in its challenge window; only a settlement of a higher nonce replaces it, this one is at nonce 2")

	require.False(t, session.PaysAtOnce(early))
	require.False(t, session.PaysAtOnce(later))
	require.True(t, session.PaysAtOnce(final))
}

// A host signs once for all its slots, so a settlement lists the same
// signature for each of them. It is checked on the curve once: with holder
// 1 on slots 1 and 2, the quorum of 3 costs two curve checks, not three.
// Not parallel: it reads the process's count of curve checks.
func TestSettlementChecksARepeatedSignatureOnce(t *testing.T) {
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 1, 1, 2} })
	b.inference(t, 1, 1, 1)
	m := b.f.Settle(b.gw.Replica, 0, 1, 2, 3)
	require.Equal(t, m.Signatures[1].Sig.Sig, m.Signatures[2].Sig.Sig, "one signature for both slots of holder 1")
	before := signing.CurveChecks()
	_, err := session.VerifySettlement(b.f.Snapshot, m, nil)
	require.NoError(t, err)
	require.Equal(t, uint64(2), signing.CurveChecks()-before, "slots 0 and 1 checked; slot 2 repeats slot 1's signature")

	// Through a memo that saw them, none is checked again.
	memo := signing.NewMemo(16)
	_, err = session.VerifySettlementWith(b.f.Snapshot, m, nil, memo)
	require.NoError(t, err)
	before = signing.CurveChecks()
	_, err = session.VerifySettlementWith(b.f.Snapshot, m, nil, memo)
	require.NoError(t, err)
	require.Zero(t, signing.CurveChecks()-before)
}

// ArrangeSignatures lists first the signature that counts for the most
// slots, and the chain then reaches the quorum with fewer curve checks.
// Holders: 0 on slot 0, 1 on slots 1 and 4, 2 on slot 2, 3 on slots 3, 5
// and 6. The quorum of 7 slots is 5: in slot order that takes holders 0,
// 1, 2, 3 (four checks); arranged, holders 3 and 1 (two checks). Not
// parallel: it reads the process's count of curve checks.
func TestArrangedSignaturesReachTheQuorumWithFewerChecks(t *testing.T) {
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 1, 2, 3, 1, 3, 3} })
	b.inference(t, 1, 1, 1)
	m := b.f.Settle(b.gw.Replica, b.f.AllSlots()...)
	checks := func(m *sessionpb.Settlement) uint64 {
		before := signing.CurveChecks()
		_, err := session.VerifySettlement(b.f.Snapshot, m, nil)
		require.NoError(t, err)
		return signing.CurveChecks() - before
	}
	require.Equal(t, uint64(4), checks(m), "slot order")

	session.ArrangeSignatures(m)
	var order []uint32
	for _, ss := range m.Signatures {
		order = append(order, ss.Slot)
	}
	require.Equal(t, []uint32{3, 5, 6, 1, 4, 0, 2}, order)
	require.Equal(t, uint64(2), checks(m), "arranged")
}
