package session

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/devshard/devshard/session/sessionpb"
)

// encoder writes the fixed, big-endian byte layout that roots and signatures
// are computed over (docs/protocol.md). Variable-length fields carry a u32
// length prefix, so no two field sequences share an encoding.
type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *encoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) i64(v int64)  { e.u64(uint64(v)) }
func (e *encoder) raw(v []byte) { e.b = append(e.b, v...) }
func (e *encoder) bytes(v []byte) {
	e.u32(uint32(len(v)))
	e.b = append(e.b, v...)
}
func (e *encoder) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// domain starts every signed or hashed message with a length-prefixed tag,
// so bytes signed for one purpose never verify for another.
func (e *encoder) domain(tag string) {
	e.u8(uint8(len(tag)))
	e.b = append(e.b, tag...)
}

func (e *encoder) sum() [32]byte { return sha256.Sum256(e.b) }

// Tags of the hashed structures.
const (
	tagRoot   = "devshard/v1/root"
	tagStats  = "devshard/v1/stats"
	tagSealed = "devshard/v1/sealed"
)

// Tx kind bytes in the canonical tx layout.
const (
	kindStart      uint8 = 1
	kindConfirm    uint8 = 2
	kindFinish     uint8 = 3
	kindValidation uint8 = 4
	kindTimeout    uint8 = 5
	kindFinalize   uint8 = 6
)

// encodeTx writes the canonical bytes of a tx: its kind, its slot and its
// body. The tx's own signature is not part of them.
func encodeTx(e *encoder, tx *sessionpb.Tx) {
	if tx == nil {
		e.u8(0)
		e.u32(0)
		return
	}
	switch b := tx.Body.(type) {
	case *sessionpb.Tx_Start:
		e.u8(kindStart)
		e.u32(tx.Slot)
		e.u64(b.Start.GetInferenceId())
		e.u64(b.Start.GetInputTokens())
		e.u64(b.Start.GetMaxTokens())
		e.bytes(b.Start.GetPromptHash())
		e.bytes([]byte(b.Start.GetModel()))
	case *sessionpb.Tx_Confirm:
		e.u8(kindConfirm)
		e.u32(tx.Slot)
		e.u64(b.Confirm.GetInferenceId())
		e.i64(b.Confirm.GetConfirmedAt())
	case *sessionpb.Tx_Finish:
		e.u8(kindFinish)
		e.u32(tx.Slot)
		e.u64(b.Finish.GetInferenceId())
		e.u64(b.Finish.GetInputTokens())
		e.u64(b.Finish.GetOutputTokens())
		e.bytes(b.Finish.GetResponseHash())
	case *sessionpb.Tx_Validation:
		e.u8(kindValidation)
		e.u32(tx.Slot)
		e.u64(b.Validation.GetInferenceId())
		e.bool(b.Validation.GetValid())
		e.bytes(b.Validation.GetResponseHash())
	case *sessionpb.Tx_Timeout:
		e.u8(kindTimeout)
		e.u32(tx.Slot)
		e.u64(b.Timeout.GetInferenceId())
	case *sessionpb.Tx_Finalize:
		e.u8(kindFinalize)
		e.u32(tx.Slot)
	default:
		// Unknown or empty bodies are rejected before anything is encoded;
		// a zero kind keeps the layout total anyway.
		e.u8(0)
		e.u32(tx.Slot)
	}
}

// recordLeaf is the leaf hash of a record in the live tree and in the sealed
// accumulator: SHA-256(0x00 || record layout).
func recordLeaf(r *sessionpb.InferenceRecord) [32]byte {
	e := encoder{b: make([]byte, 0, 192)}
	e.u8(0x00)
	e.u64(r.Id)
	e.u8(uint8(r.Status))
	e.u32(r.ExecutorSlot)
	e.u64(r.InputTokens)
	e.u64(r.MaxTokens)
	e.u64(r.Reserved)
	e.u64(r.Cost)
	e.u64(r.TokensUsed)
	e.bytes(r.PromptHash)
	e.bytes(r.ResponseHash)
	e.i64(r.ConfirmedAt)
	e.u64(r.FinishedNonce)
	e.bytes(r.SampleSeed)
	e.bytes(r.ValidVotes)
	e.bytes(r.InvalidVotes)
	e.bytes(r.TimeoutVotes)
	return e.sum()
}

// statsLeaf hashes one slot's HostStats.
func statsLeaf(slot uint32, s *sessionpb.HostStats) [32]byte {
	e := encoder{b: make([]byte, 0, 64)}
	e.u32(slot)
	e.u64(s.Cost)
	e.u64(s.Finished)
	e.u64(s.Missed)
	e.u64(s.Invalid)
	e.u64(s.Validated)
	e.u64(s.ValidationsDone)
	e.i64(s.LastConfirmedAt)
	return e.sum()
}

// statsDigest commits to every slot's stats, in slot order.
func statsDigest(leaves [][32]byte) [32]byte {
	e := encoder{b: make([]byte, 0, 24+32*len(leaves))}
	e.domain(tagStats)
	e.u32(uint32(len(leaves)))
	for i := range leaves {
		e.raw(leaves[i][:])
	}
	return e.sum()
}

// foldSealed appends one sealed record to the accumulator digest.
func foldSealed(digest [32]byte, leaf [32]byte) [32]byte {
	e := encoder{b: make([]byte, 0, 96)}
	e.domain(tagSealed)
	e.raw(digest[:])
	e.raw(leaf[:])
	return e.sum()
}

// rootParts are the fields the state root commits to. The chain rebuilds
// them from a Settlement, a replica from its Session.
type rootParts struct {
	escrowID        uint64
	protocolVersion uint32
	nonce           uint64
	phase           sessionpb.Phase
	activeNonces    uint64
	balance         uint64
	reserved        uint64
	fees            uint64
	stats           [32]byte
	records         [32]byte
	sealedCount     uint64
	sealedDigest    [32]byte
}

func (p *rootParts) root() [32]byte {
	e := encoder{b: make([]byte, 0, 200)}
	e.domain(tagRoot)
	e.u64(p.escrowID)
	e.u32(p.protocolVersion)
	e.u64(p.nonce)
	e.u8(uint8(p.phase))
	e.u64(p.activeNonces)
	e.u64(p.balance)
	e.u64(p.reserved)
	e.u64(p.fees)
	e.raw(p.stats[:])
	e.raw(p.records[:])
	e.u64(p.sealedCount)
	e.raw(p.sealedDigest[:])
	return e.sum()
}
