import RotaService
import Testing

@Suite("Job envelopes")
struct EnvelopeTests {
    @Test("round trip, binary payloads, and clear errors for what is not an envelope")
    func roundTrip() throws {
        let envelope = try JobEnvelope(handler: "exec", payload: [0, 10, 255, 10])
        let decoded = try JobEnvelope(decoding: envelope.encoded())
        #expect(decoded == envelope)
        #expect(throws: EnvelopeError.self) { try JobEnvelope(decoding: Array("plain".utf8)) }
        #expect(throws: EnvelopeError.self) { try JobEnvelope(handler: "Bad Name", payload: []) }
        #expect(throws: EnvelopeError.self) { try JobEnvelope(decoding: Array("rota-job/1\nno-newline".utf8)) }
    }
}
